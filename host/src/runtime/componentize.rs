//! Core modules on the component contract: C (clang and wasi-libc with the bindings
//! `wit-bindgen c` writes, see guest-sdk/c), or any toolchain that writes WASI preview-1 modules
//! with wit-bindgen's `component-type` custom section. Such a module is made into a `plugin`
//! component here, with wasmtime's own preview-1 adapter (embedded, the reactor one: the
//! module exports `handle`, not `_start`), before it is compiled; a core module without the
//! section is a command ([`super::command`]). [`componentize`] is also `natsplug
//! componentize`, to ship the component itself.

use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;

/// The prefix of the custom section wit-bindgen writes the world's type in.
const COMPONENT_TYPE: &[u8] = b"component-type";

/// Whether `wasm`, a core module, carries a `component-type` custom section. Reads only the
/// section headers; anything malformed is `false` (and fails as a command later).
pub fn has_component_type(wasm: &[u8]) -> bool {
    let Some(mut rest) = wasm.get(8..) else {
        return false;
    };
    while let Some((&id, after)) = rest.split_first() {
        let Some((size, body)) = leb128_u32(after) else {
            return false;
        };
        let Some((section, next)) = body.split_at_checked(size as usize) else {
            return false;
        };
        if id == 0
            && let Some((len, name)) = leb128_u32(section)
            && name
                .get(..len as usize)
                .is_some_and(|name| name.starts_with(COMPONENT_TYPE))
        {
            return true;
        }
        rest = next;
    }
    false
}

/// An unsigned LEB128 `u32` at the start of `bytes`, and what follows it.
fn leb128_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// The component of a core module built against the `plugin` world: its `component-type`
/// section says the world, the preview-1 adapter turns its WASI imports into WASI 0.2 ones.
/// The module's bytes are the guest's: a panic in the encoder is an error, not the host's end.
pub fn componentize(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    std::panic::catch_unwind(|| {
        wit_component::ComponentEncoder::default()
            .module(wasm)?
            .adapter(
                "wasi_snapshot_preview1",
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )?
            .validate(true)
            .encode()
    })
    .unwrap_or_else(|_| anyhow::bail!("the component encoder panicked on this module"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A core module with one custom section named `name`.
    fn with_custom(name: &str) -> Vec<u8> {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        let body = [&[name.len() as u8][..], name.as_bytes(), b"xyz"].concat();
        wasm.push(0);
        wasm.push(body.len() as u8);
        wasm.extend(body);
        wasm
    }

    #[test]
    fn the_component_type_section_is_found() {
        assert!(has_component_type(&with_custom("component-type:plugin")));
        assert!(has_component_type(&with_custom("component-type")));
        assert!(!has_component_type(&with_custom("name")));
        assert!(!has_component_type(b"\0asm\x01\0\0\0"));
        // A section that claims more bytes than there are.
        assert!(!has_component_type(
            b"\0asm\x01\0\0\0\x00\x7f\x0ecomponent-type"
        ));
        assert!(!has_component_type(b""));
    }

    #[test]
    fn a_module_that_is_not_one_is_an_error() {
        let err = componentize(&with_custom("component-type:x")).unwrap_err();
        assert!(!format!("{err:#}").is_empty());
    }

    proptest! {
        /// Random bytes after the header never panic the scanner.
        #[test]
        fn any_bytes_are_scanned_without_a_panic(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let wasm = [&b"\0asm\x01\0\0\0"[..], &tail].concat();
            let _ = has_component_type(&wasm);
        }
    }
}
