//! Plain data exchanged with providers, generated from `proto/provider.proto`.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/omnidisk.provider.v1.rs"));

/// One GiB in bytes, the allocation unit of most cloud disks.
pub const GIB: i64 = 1 << 30;

impl Topology {
    /// A topology made of the given key/value pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            segments: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// True when every segment of `self` is also in `other` with the same value.
    pub fn is_subset_of(&self, other: &Topology) -> bool {
        self.segments
            .iter()
            .all(|(k, v)| other.segments.get(k) == Some(v))
    }
}
