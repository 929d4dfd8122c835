//! `include/glint.h` is what cbindgen generates from the sources now: fails when the
//! checked-in header is stale (`GLINT_BLESS=1` rewrites it instead).

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/glint.h");
    if std::env::var_os("GLINT_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/glint.h");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/glint.h is stale: run `GLINT_BLESS=1 cargo test -p glint-hosts --test header`"
    );
}
