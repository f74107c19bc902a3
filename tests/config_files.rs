//! Every configuration file shipped in `config/` loads without error, so an example
//! cannot drift out of step with the schema.

use std::path::Path;

use cachet::config::Config;

#[test]
fn every_shipped_config_file_loads() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            if let Err(errors) = Config::load(&path) {
                return Err(format!("{} does not load:\n{errors}", path.display()).into());
            }
            loaded.push(path);
        }
    }
    // The default file at least must be there; an empty directory proves nothing.
    assert!(
        loaded.iter().any(|p| p.ends_with("cachet.toml")),
        "config/cachet.toml not found in {loaded:?}"
    );
    Ok(())
}
