//! The `component-type` section, which makes a core module a component (C with the C SDK).
//! The C SDK's bindings (guest-sdk/c/bindings, checked in so a C project needs no generator)
//! are exactly what wit-bindgen c 0.63.0 writes for the `plugin` world of guest-sdk/wit: a
//! change to the WIT that is not regenerated fails here, naming the file that differs. And a
//! hostile section, which the encoder would take minutes over or overflow its stack on (an
//! abort no `catch_unwind` stops), is refused at load with a clear error.

use std::path::Path;

use natsplug::manifest::Manifest;
use natsplug::runtime::LoadError;

use wit_bindgen_core::Files;

#[test]
fn the_c_bindings_are_what_wit_bindgen_generates_from_the_wit() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_path(sdk.join("wit")).unwrap();
    let world = resolve.select_world(&[package], Some("plugin")).unwrap();
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .unwrap();

    let generated: Vec<_> = files.iter().collect();
    let names: Vec<_> = generated.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["plugin.c", "plugin.h", "plugin_component_type.o"]);
    let checked_in = sdk.join("c/bindings");
    let mut on_disk: Vec<_> = std::fs::read_dir(&checked_in)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, names, "{} holds other files", checked_in.display());
    for (name, contents) in generated {
        assert!(
            std::fs::read(checked_in.join(name)).unwrap() == contents,
            "guest-sdk/c/bindings/{name} is not what wit-bindgen c 0.63.0 writes: run \
             `wit-bindgen c --world plugin --out-dir guest-sdk/c/bindings guest-sdk/wit`"
        );
    }
}

/// A core module's header, a type section with `(func (param i32))` and an import of it as
/// `f` of `a:b/i`: the encoder walks the types of what a module imports.
const IMPORTS_F: &[u8] =
    b"\0asm\x01\0\0\0\x01\x05\x01\x60\x01\x7f\x00\x02\x0b\x01\x05a:b/i\x01f\x00\x00";

/// [`IMPORTS_F`] with the `component-type` section of `world` in `wit`, as wit-bindgen would
/// write it.
fn module_declaring(wit: &str, world: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("attack.wit", wit).unwrap();
    let world = resolve.select_world(&[package], Some(world)).unwrap();
    let mut module = IMPORTS_F.to_vec();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .unwrap();
    module
}

fn load_error(wasm: &[u8]) -> String {
    let manifest = Manifest::parse("", Path::new("attack.toml")).unwrap();
    match natsplug_tests::cached_runtime().load("attack", wasm, manifest) {
        Err(LoadError::NotAComponent { reason, .. }) => reason,
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn a_component_type_section_the_encoder_would_choke_on_is_refused_at_load() {
    // 30,000 aliases of aliases (`type t1 = t0; ...`): about 400 KB, whose encoding recursed
    // deep enough to abort the process on a 2 MiB stack (this test's thread's; without the
    // bound, this test binary dies of it).
    let aliases: String = (1..=30_000)
        .map(|i| format!("  type t{i} = t{};\n", i - 1))
        .collect();
    let deep = module_declaring(
        &format!(
            "package a:b;\ninterface i {{\n  type t0 = u32;\n{aliases}  f: func(x: t30000);\n}}\n\
             world w {{\n  import i;\n}}\n"
        ),
        "w",
    );
    assert!(deep.len() > 300_000, "{}", deep.len());
    let reason = load_error(&deep);
    assert!(
        reason.contains("component-type sections of ")
            && reason.ends_with("bytes: at most 65536 are taken"),
        "{reason}"
    );

    // Five sections (wit-bindgen writes one per world): each merged into all before it.
    let mut many = module_declaring(
        "package a:b;\ninterface i {\n  f: func(x: u32);\n}\nworld w {\n  import i;\n}\n",
        "w",
    );
    let section = many[IMPORTS_F.len()..].to_vec();
    for _ in 0..4 {
        many.extend_from_slice(&section);
    }
    assert_eq!(
        load_error(&many),
        "a core module with a component-type section, which does not make a component with \
         the WASI preview-1 adapter: 5 component-type sections: at most 4 are taken"
    );
}
