//! docs/library.md shows `examples/print_records.rs` whole: the application a user copies is
//! the one the workspace compiles.

#[test]
fn the_library_guide_shows_the_example_as_compiled() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/print_records.rs")).unwrap();
    let guide = std::fs::read_to_string(root.join("../docs/library.md")).unwrap();
    let shown = format!("```rust\n{example}```\n");
    assert!(
        guide.contains(&shown),
        "docs/library.md must show consumer/examples/print_records.rs whole, in a ```rust block: copy it over"
    );
}
