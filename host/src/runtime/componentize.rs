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

/// The most `component-type` sections a module may carry (wit-bindgen writes one per world
/// linked in: one for the C SDK). The encoder merges each into all before it, so its time
/// grows with the square of their number: 8,000 took 16 s.
pub const MAX_COMPONENT_TYPES: usize = 4;
/// The most bytes they may hold together (the C SDK's is 2 KB). The encoder walks a type's
/// aliases by recursion: a 400 KB section of 30,000 aliases overflowed a 2 MiB stack, which
/// aborts the process; 64 KiB holds fewer than 6,000.
pub const MAX_COMPONENT_TYPE_BYTES: usize = 64 * 1024;

/// The `component-type` custom sections of a core module: how many, and their bytes together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentTypes {
    /// How many sections.
    pub sections: usize,
    /// Their contents' bytes, names included.
    pub bytes: usize,
}

/// The `component-type` sections of `wasm`, a core module. Reads only the section headers;
/// anything malformed ends the scan (and the module fails as what it is later).
pub fn component_types(wasm: &[u8]) -> ComponentTypes {
    let mut found = ComponentTypes::default();
    let Some(mut rest) = wasm.get(8..) else {
        return found;
    };
    while let Some((&id, after)) = rest.split_first() {
        let Some((size, body)) = leb128_u32(after) else {
            return found;
        };
        let Some((section, next)) = body.split_at_checked(size as usize) else {
            return found;
        };
        if id == 0
            && let Some((len, name)) = leb128_u32(section)
            && name
                .get(..len as usize)
                .is_some_and(|name| name.starts_with(COMPONENT_TYPE))
        {
            found.sections += 1;
            found.bytes += section.len();
        }
        rest = next;
    }
    found
}

/// Whether `wasm`, a core module, carries a `component-type` custom section.
pub fn has_component_type(wasm: &[u8]) -> bool {
    component_types(wasm).sections > 0
}

/// An unsigned LEB128 `u32` at the start of `bytes`, and what follows it; `None` past 32 bits.
fn leb128_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(5) {
        if i == 4 && byte > 0x0f {
            return None;
        }
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// The component of a core module built against the `plugin` world: its `component-type`
/// section says the world, the preview-1 adapter turns its WASI imports into WASI 0.2 ones.
/// The module's bytes are the guest's: a panic in the encoder is an error, not the host's end,
/// and sections past [`MAX_COMPONENT_TYPES`] or [`MAX_COMPONENT_TYPE_BYTES`] (what could hold
/// the encoder for minutes or overflow its stack, which no `catch_unwind` stops) are refused
/// before it sees them.
pub fn componentize(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let found = component_types(wasm);
    anyhow::ensure!(
        found.sections <= MAX_COMPONENT_TYPES,
        "{} component-type sections: at most {MAX_COMPONENT_TYPES} are taken",
        found.sections
    );
    anyhow::ensure!(
        found.bytes <= MAX_COMPONENT_TYPE_BYTES,
        "component-type sections of {} bytes: at most {MAX_COMPONENT_TYPE_BYTES} are taken",
        found.bytes
    );
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
        with_sections(&[(name, 3)])
    }

    /// A core module with custom sections, each `(name, bytes of content)`.
    fn with_sections(sections: &[(&str, usize)]) -> Vec<u8> {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        for &(name, len) in sections {
            let body = [&[name.len() as u8][..], name.as_bytes(), &vec![b'x'; len]].concat();
            wasm.push(0);
            leb128(&mut wasm, body.len());
            wasm.extend(body);
        }
        wasm
    }

    fn leb128(out: &mut Vec<u8>, mut value: usize) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn too_many_or_too_large_component_type_sections_are_refused_before_the_encoder() {
        let name = "component-type:plugin";
        let five = with_sections(&[(name, 10); 5]);
        assert_eq!(component_types(&five).sections, 5);
        let err = componentize(&five).unwrap_err().to_string();
        assert_eq!(err, "5 component-type sections: at most 4 are taken");
        let large = with_sections(&[("name", 100_000), (name, MAX_COMPONENT_TYPE_BYTES)]);
        assert_eq!(
            component_types(&large),
            ComponentTypes {
                sections: 1,
                bytes: MAX_COMPONENT_TYPE_BYTES + 1 + name.len()
            }
        );
        let err = componentize(&large).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "component-type sections of {} bytes: at most 65536 are taken",
                MAX_COMPONENT_TYPE_BYTES + 22
            )
        );
    }

    #[test]
    fn a_leb128_past_32_bits_ends_the_scan() {
        assert_eq!(
            leb128_u32(&[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap().0,
            u32::MAX
        );
        assert_eq!(leb128_u32(&[0xff, 0xff, 0xff, 0xff, 0x10]), None);
        assert_eq!(leb128_u32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), None);
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
