//! The chat and console pages are embedded from web/dist: rebuild when `make web`
//! writes new ones.
fn main() {
    println!("cargo:rerun-if-changed=../../web/dist");
}
