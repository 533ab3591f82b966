//! The C SDK's bindings (guest-sdk/c/bindings, checked in so a C project needs no generator)
//! are exactly what wit-bindgen c 0.63.0 writes for the `plugin` world of guest-sdk/wit: a
//! change to the WIT that is not regenerated fails here, naming the file that differs.

use std::path::Path;

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
