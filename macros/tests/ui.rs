//! Compile tests: what the derives accept, and the errors they give for each misuse.
//!
//! After changing a message, regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p backstop-macros --test ui` and read the diff.

#[test]
fn derives_accept_valid_input_and_explain_every_misuse() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
