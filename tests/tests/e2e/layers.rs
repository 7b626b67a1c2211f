//! The crates' modules import each other in one direction only: a cycle would make each module
//! of it depend on all the others, and none could be read, tested or moved alone.

use samblik_tests::module_cycle;
use std::path::Path;

fn src(crate_dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src")
}

#[test]
fn no_crate_has_an_import_cycle() {
    for crate_dir in [
        "gateway",
        "gateway/audit",
        "gateway/panel",
        "samblik",
        "adapters",
        "adapters/reference",
        "adapters/testkit",
        "adapters/synth",
        "policy",
        "proto",
    ] {
        assert_eq!(module_cycle(&src(crate_dir)), None, "{crate_dir}");
    }
}

/// The check finds a cycle where there is one, through `crate::` and `super::` alike, and
/// none in a comment.
#[test]
fn a_cycle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("store")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod store;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::store::b::Thing;\n").unwrap();
    std::fs::write(src.join("store/mod.rs"), "pub mod b;\n").unwrap();
    std::fs::write(src.join("store/b.rs"), "// crate::a is only mentioned\n").unwrap();
    assert_eq!(module_cycle(src), None);
    std::fs::write(src.join("store/mod.rs"), "pub mod b;\nuse crate::a::X;\n").unwrap();
    std::fs::write(src.join("store/b.rs"), "use super::Y;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::store::b::Thing;\n").unwrap();
    let cycle = module_cycle(src).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert!(
        cycle.contains(&"a".to_owned()) && cycle.contains(&"store::b".to_owned()),
        "{cycle:?}"
    );
}
