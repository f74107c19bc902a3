//! The command table: flags and key positions of every command.
