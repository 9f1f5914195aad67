//! Misuse of `#[capwire::interface]` fails to compile, with a clear message
//! (the expected compiler output is in `tests/ui/*.stderr`).

#[test]
fn misuse_is_refused_at_compile_time() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
