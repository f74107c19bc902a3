//! Key pattern -> keyspace mode.
