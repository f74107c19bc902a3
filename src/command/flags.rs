//! Bitsets for the two flag vocabularies of `COMMAND`: command flags (`write`,
//! `readonly`, …) and key-spec flags (`RW`, `access`, …).
//!
//! Both are parsed from the flag strings Redis reports, case-insensitively; names this
//! build does not know are ignored so that a newer upstream never breaks start-up.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Defines a `u32` bitset newtype with one associated constant per Redis flag string,
/// plus lookup by name and a `Debug` that prints the names.
macro_rules! flag_set {
    ($(#[$meta:meta])* $ty:ident { $($(#[$cmeta:meta])* $konst:ident = $bit:expr, $name:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $ty(u32);

        impl $ty {
            $($(#[$cmeta])* pub const $konst: $ty = $ty(1 << $bit);)*

            /// Every flag this build knows, with the string Redis uses for it.
            const NAMES: &'static [($ty, &'static str)] = &[$(($ty::$konst, $name),)*];

            /// No flags.
            pub const fn empty() -> $ty {
                $ty(0)
            }

            /// The raw bits (stable only within one build).
            pub const fn bits(self) -> u32 {
                self.0
            }

            /// True if every flag of `other` is set in `self`.
            pub const fn contains(self, other: $ty) -> bool {
                self.0 & other.0 == other.0
            }

            /// True if any flag of `other` is set in `self`.
            pub const fn intersects(self, other: $ty) -> bool {
                self.0 & other.0 != 0
            }

            /// True if no flag is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// The flag Redis calls `name` (ASCII case-insensitive), if this build knows it.
            pub fn from_name(name: &[u8]) -> Option<$ty> {
                Self::NAMES
                    .iter()
                    .find(|(_, known)| known.as_bytes().eq_ignore_ascii_case(name))
                    .map(|(flag, _)| *flag)
            }
        }

        impl BitOr for $ty {
            type Output = $ty;
            fn bitor(self, rhs: $ty) -> $ty {
                $ty(self.0 | rhs.0)
            }
        }

        impl BitOrAssign for $ty {
            fn bitor_assign(&mut self, rhs: $ty) {
                self.0 |= rhs.0;
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut set = f.debug_set();
                for (flag, name) in Self::NAMES {
                    if self.contains(*flag) {
                        set.entry(&format_args!("{name}"));
                    }
                }
                set.finish()
            }
        }
    };
}

flag_set! {
    /// Command flags as reported in the third field of a `COMMAND` entry.
    CommandFlags {
        WRITE = 0, "write";
        READONLY = 1, "readonly";
        DENYOOM = 2, "denyoom";
        MODULE = 3, "module";
        ADMIN = 4, "admin";
        PUBSUB = 5, "pubsub";
        NOSCRIPT = 6, "noscript";
        BLOCKING = 7, "blocking";
        LOADING = 8, "loading";
        STALE = 9, "stale";
        SKIP_MONITOR = 10, "skip_monitor";
        SKIP_SLOWLOG = 11, "skip_slowlog";
        ASKING = 12, "asking";
        FAST = 13, "fast";
        NO_AUTH = 14, "no_auth";
        MAY_REPLICATE = 15, "may_replicate";
        NO_MANDATORY_KEYS = 16, "no_mandatory_keys";
        NO_ASYNC_LOADING = 17, "no_async_loading";
        NO_MULTI = 18, "no_multi";
        MOVABLEKEYS = 19, "movablekeys";
        ALLOW_BUSY = 20, "allow_busy";
        SENTINEL = 21, "sentinel";
        ONLY_SENTINEL = 22, "only_sentinel";
        PROTECTED = 23, "protected";
    }
}

flag_set! {
    /// Key-spec flags: how a command accesses one of its keys.
    KeyFlags {
        /// Read-only access.
        RO = 0, "RO";
        /// Read-write access.
        RW = 1, "RW";
        /// Overwrite: the old value is not read.
        OW = 2, "OW";
        /// Removes the key.
        RM = 3, "RM";
        /// The value is returned, copied or otherwise used.
        ACCESS = 4, "access";
        /// Updates part of the value.
        UPDATE = 5, "update";
        /// Adds data to the value.
        INSERT = 6, "insert";
        /// Deletes part of the value.
        DELETE = 7, "delete";
        /// Not a key (a channel, say) although it hashes like one.
        NOT_KEY = 8, "not_key";
        /// The spec may miss keys: use the command's own key procedure.
        INCOMPLETE = 9, "incomplete";
        /// The flags depend on the arguments: use the command's own key procedure.
        VARIABLE_FLAGS = 10, "variable_flags";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_unknown_names_are_none() {
        assert_eq!(CommandFlags::from_name(b"WRITE"), Some(CommandFlags::WRITE));
        assert_eq!(
            CommandFlags::from_name(b"no_multi"),
            Some(CommandFlags::NO_MULTI)
        );
        assert_eq!(CommandFlags::from_name(b"random"), None);
        assert_eq!(KeyFlags::from_name(b"rw"), Some(KeyFlags::RW));
        assert_eq!(KeyFlags::from_name(b"ACCESS"), Some(KeyFlags::ACCESS));
        assert_eq!(KeyFlags::from_name(b"nope"), None);
    }

    #[test]
    fn set_operations_and_debug() {
        let flags = KeyFlags::RW | KeyFlags::ACCESS;
        assert!(flags.contains(KeyFlags::RW));
        assert!(!flags.contains(KeyFlags::RW | KeyFlags::DELETE));
        assert!(flags.intersects(KeyFlags::RW | KeyFlags::DELETE));
        assert!(KeyFlags::empty().is_empty());
        assert_eq!(format!("{flags:?}"), "{RW, access}");
    }
}
