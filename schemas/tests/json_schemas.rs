//! The checked-in JSON Schemas match the Rust types. `UPDATE_SCHEMAS=1 cargo test` rewrites them.

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, text) in steward_schemas::json_schemas() {
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != text {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/json/{stale:?} are out of date with the Rust types; run `UPDATE_SCHEMAS=1 cargo test -p steward-schemas` (or `steward schema`) and commit them"
    );
}
