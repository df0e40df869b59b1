//! `sqlx::migrate!` embeds the migrations at compile time: a new or changed file there
//! must rebuild this crate.
fn main() {
    for dialect in ["sqlite", "postgres"] {
        let dir = format!("../../migrations/{dialect}");
        // The folder (a file added or removed) and each file (an edit).
        println!("cargo:rerun-if-changed={dir}");
        for entry in std::fs::read_dir(&dir)
            .expect("the migrations folder")
            .flatten()
        {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}
