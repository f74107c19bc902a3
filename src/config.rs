//! Configuration: TOML schema, defaults, validation.
