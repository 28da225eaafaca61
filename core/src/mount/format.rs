//! Filesystem types and the mkfs tuning a StorageClass may ask for.
//!
//! The controller takes the tuning keys out of the StorageClass parameters
//! with [`extract_from_params`] and stores them, validated and in canonical
//! form, in the volume context; the node reads them back with
//! [`from_context`] (validating again: a statically provisioned volume's
//! context is written by hand) and turns them into mkfs arguments with
//! [`FormatOptions::mkfs_args`].
//!
//! `mkfsOptions` is free text, so every token is checked against an
//! allow-list of flags per filesystem family, with the values each flag
//! takes. Flags that read or write host paths (`-d`, `-z`, `-p`, external
//! log devices), force an overwrite (`-F`, `-f`) or destroy data (`-S`) are
//! not on it.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::CoreError;

/// Parameter/context key: filesystem block size in bytes.
pub const BLOCK_SIZE_KEY: &str = "blockSize";
/// Parameter/context key: inode size in bytes.
pub const INODE_SIZE_KEY: &str = "inodeSize";
/// Parameter/context key: bytes per inode (ext only).
pub const BYTES_PER_INODE_KEY: &str = "bytesPerInode";
/// Parameter/context key: number of inodes (ext only).
pub const NUMBER_OF_INODES_KEY: &str = "numberOfInodes";
/// Parameter/context key: enable the ext4 bigalloc feature.
pub const EXT4_BIG_ALLOC_KEY: &str = "ext4BigAlloc";
/// Parameter/context key: ext4 bigalloc cluster size in bytes.
pub const EXT4_CLUSTER_SIZE_KEY: &str = "ext4ClusterSize";
/// Parameter/context key: extra mkfs flags, whitespace-separated.
pub const MKFS_OPTIONS_KEY: &str = "mkfsOptions";

/// Every key this module owns, in the spelling stored in volume contexts.
pub const KEYS: [&str; 7] = [
    BLOCK_SIZE_KEY,
    INODE_SIZE_KEY,
    BYTES_PER_INODE_KEY,
    NUMBER_OF_INODES_KEY,
    EXT4_BIG_ALLOC_KEY,
    EXT4_CLUSTER_SIZE_KEY,
    MKFS_OPTIONS_KEY,
];

/// Why format options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A key's value is malformed or out of range.
    #[error("`{key}`: {value:?} {reason}")]
    InvalidValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `mkfsOptions` token is not an allowed flag or value.
    #[error("`mkfsOptions`: token {token:?} is not allowed{detail}")]
    UnsafeMkfsToken {
        /// The refused token.
        token: String,
        /// More context (which filesystem, what was expected).
        detail: String,
    },
    /// A key does not apply to the filesystem being created.
    #[error("`{key}` cannot be used with {fs}")]
    NotForFilesystem {
        /// The key.
        key: &'static str,
        /// The filesystem.
        fs: FsType,
    },
    /// Keys that only make sense together were not given together.
    #[error("{0}")]
    Inconsistent(String),
    /// The filesystem type is not one the node can create.
    #[error("filesystem type {0:?} is not supported (supported: ext4, ext3, xfs)")]
    UnknownFilesystem(String),
}

impl From<FormatError> for CoreError {
    fn from(err: FormatError) -> Self {
        CoreError::InvalidArgument(err.to_string())
    }
}

/// A filesystem the node can create, mount and grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    /// ext3.
    Ext3,
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
}

impl FsType {
    /// Parses a CSI `fs_type` (case-insensitive).
    pub fn parse(raw: &str) -> Result<Self, FormatError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "ext3" => Ok(FsType::Ext3),
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(FormatError::UnknownFilesystem(raw.to_owned())),
        }
    }

    /// The name mount(2) and blkid use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// The mkfs program for this type.
    pub fn mkfs_program(self) -> &'static str {
        match self {
            FsType::Ext3 => "mkfs.ext3",
            FsType::Ext4 => "mkfs.ext4",
            FsType::Xfs => "mkfs.xfs",
        }
    }

    fn is_ext(self) -> bool {
        matches!(self, FsType::Ext3 | FsType::Ext4)
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validated mkfs tuning for one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatOptions {
    /// Block size in bytes.
    pub block_size: Option<u32>,
    /// Inode size in bytes.
    pub inode_size: Option<u32>,
    /// Bytes per inode (ext).
    pub bytes_per_inode: Option<u64>,
    /// Number of inodes (ext).
    pub number_of_inodes: Option<u64>,
    /// ext4 bigalloc.
    pub ext4_big_alloc: Option<bool>,
    /// ext4 bigalloc cluster size in bytes.
    pub ext4_cluster_size: Option<u32>,
    /// Extra mkfs tokens, each checked against the allow-list.
    pub mkfs_options: Vec<String>,
}

/// Removes the format keys from StorageClass parameters (case-insensitive)
/// and returns them, validated and canonical, for the volume context.
pub fn extract_from_params(
    params: &mut BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, CoreError> {
    let mut raw = BTreeMap::new();
    for key in KEYS {
        let found: Vec<String> = params
            .keys()
            .filter(|k| k.eq_ignore_ascii_case(key))
            .cloned()
            .collect();
        if found.len() > 1 {
            return Err(FormatError::Inconsistent(format!(
                "parameter `{key}` is given more than once ({})",
                found.join(", ")
            ))
            .into());
        }
        if let Some(k) = found.first() {
            if let Some(v) = params.remove(k) {
                raw.insert(key, v);
            }
        }
    }
    let options = FormatOptions::from_raw(&raw)?;
    Ok(options.to_context())
}

/// Reads the format options back from a volume context (other keys are
/// ignored).
pub fn from_context(ctx: &BTreeMap<String, String>) -> Result<FormatOptions, CoreError> {
    let mut raw = BTreeMap::new();
    for key in KEYS {
        if let Some((_, v)) = ctx.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            raw.insert(key, v.clone());
        }
    }
    Ok(FormatOptions::from_raw(&raw)?)
}

impl FormatOptions {
    fn from_raw(raw: &BTreeMap<&'static str, String>) -> Result<Self, FormatError> {
        let get = |key: &'static str| raw.get(key).map(String::as_str);
        let opts = FormatOptions {
            block_size: get(BLOCK_SIZE_KEY)
                .map(|v| power_of_two(BLOCK_SIZE_KEY, v, 512, 65536))
                .transpose()?,
            inode_size: get(INODE_SIZE_KEY)
                .map(|v| power_of_two(INODE_SIZE_KEY, v, 128, 65536))
                .transpose()?,
            bytes_per_inode: get(BYTES_PER_INODE_KEY)
                .map(|v| number(BYTES_PER_INODE_KEY, v, 1024, 64 << 20))
                .transpose()?,
            number_of_inodes: get(NUMBER_OF_INODES_KEY)
                .map(|v| number(NUMBER_OF_INODES_KEY, v, 1, u64::from(u32::MAX)))
                .transpose()?,
            ext4_big_alloc: get(EXT4_BIG_ALLOC_KEY)
                .map(|v| boolean(EXT4_BIG_ALLOC_KEY, v))
                .transpose()?,
            ext4_cluster_size: get(EXT4_CLUSTER_SIZE_KEY)
                .map(|v| power_of_two(EXT4_CLUSTER_SIZE_KEY, v, 1024, 1 << 28))
                .transpose()?,
            mkfs_options: match get(MKFS_OPTIONS_KEY) {
                None => Vec::new(),
                Some(v) => {
                    let tokens: Vec<String> = v.split_whitespace().map(str::to_owned).collect();
                    check_tokens_for_any_family(&tokens)?;
                    tokens
                }
            },
        };
        if opts.ext4_cluster_size.is_some() && opts.ext4_big_alloc != Some(true) {
            return Err(FormatError::Inconsistent(format!(
                "`{EXT4_CLUSTER_SIZE_KEY}` needs `{EXT4_BIG_ALLOC_KEY}: \"true\"`"
            )));
        }
        Ok(opts)
    }

    /// The canonical volume-context entries for these options.
    pub fn to_context(&self) -> BTreeMap<String, String> {
        let mut ctx = BTreeMap::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                ctx.insert(key.to_owned(), v);
            }
        };
        put(BLOCK_SIZE_KEY, self.block_size.map(|v| v.to_string()));
        put(INODE_SIZE_KEY, self.inode_size.map(|v| v.to_string()));
        put(
            BYTES_PER_INODE_KEY,
            self.bytes_per_inode.map(|v| v.to_string()),
        );
        put(
            NUMBER_OF_INODES_KEY,
            self.number_of_inodes.map(|v| v.to_string()),
        );
        put(
            EXT4_BIG_ALLOC_KEY,
            self.ext4_big_alloc.map(|v| v.to_string()),
        );
        put(
            EXT4_CLUSTER_SIZE_KEY,
            self.ext4_cluster_size.map(|v| v.to_string()),
        );
        if !self.mkfs_options.is_empty() {
            put(MKFS_OPTIONS_KEY, Some(self.mkfs_options.join(" ")));
        }
        ctx
    }

    /// The mkfs arguments (without the program and the device) for `fs`.
    /// Fails when an option does not apply to `fs`.
    pub fn mkfs_args(&self, fs: FsType) -> Result<Vec<String>, FormatError> {
        let mut args = Vec::new();
        let ext_only = |key: &'static str, set: bool| -> Result<(), FormatError> {
            if set && !fs.is_ext() {
                return Err(FormatError::NotForFilesystem { key, fs });
            }
            Ok(())
        };
        ext_only(BYTES_PER_INODE_KEY, self.bytes_per_inode.is_some())?;
        ext_only(NUMBER_OF_INODES_KEY, self.number_of_inodes.is_some())?;
        ext_only(EXT4_CLUSTER_SIZE_KEY, self.ext4_cluster_size.is_some())?;
        let big_alloc = self.ext4_big_alloc == Some(true);
        if big_alloc && fs != FsType::Ext4 {
            return Err(FormatError::NotForFilesystem {
                key: EXT4_BIG_ALLOC_KEY,
                fs,
            });
        }
        if let Some(size) = self.block_size {
            if fs.is_ext() {
                if size < 1024 {
                    return Err(FormatError::InvalidValue {
                        key: BLOCK_SIZE_KEY,
                        value: size.to_string(),
                        reason: format!("is below the smallest {fs} block size, 1024"),
                    });
                }
                args.extend(["-b".to_owned(), size.to_string()]);
            } else {
                args.extend(["-b".to_owned(), format!("size={size}")]);
            }
        }
        if let Some(size) = self.inode_size {
            if fs.is_ext() {
                args.extend(["-I".to_owned(), size.to_string()]);
            } else {
                if !(256..=2048).contains(&size) {
                    return Err(FormatError::InvalidValue {
                        key: INODE_SIZE_KEY,
                        value: size.to_string(),
                        reason: "is outside the XFS inode sizes 256..2048".into(),
                    });
                }
                args.extend(["-i".to_owned(), format!("size={size}")]);
            }
        }
        if let Some(n) = self.bytes_per_inode {
            args.extend(["-i".to_owned(), n.to_string()]);
        }
        if let Some(n) = self.number_of_inodes {
            args.extend(["-N".to_owned(), n.to_string()]);
        }
        if big_alloc {
            args.extend(["-O".to_owned(), "bigalloc".to_owned()]);
        }
        if let Some(n) = self.ext4_cluster_size {
            args.extend(["-C".to_owned(), n.to_string()]);
        }
        let family = if fs.is_ext() {
            Family::Ext
        } else {
            Family::Xfs
        };
        check_tokens(family, &self.mkfs_options).map_err(|e| match e {
            FormatError::UnsafeMkfsToken { token, detail } => FormatError::UnsafeMkfsToken {
                token,
                detail: format!(" for {fs}{detail}"),
            },
            other => other,
        })?;
        args.extend(self.mkfs_options.iter().cloned());
        Ok(args)
    }
}

fn number(key: &'static str, raw: &str, min: u64, max: u64) -> Result<u64, FormatError> {
    let invalid = |reason: String| FormatError::InvalidValue {
        key,
        value: raw.to_owned(),
        reason,
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("is not a whole number".into()));
    }
    let n: u64 = trimmed
        .parse()
        .map_err(|_| invalid("is too large".into()))?;
    if !(min..=max).contains(&n) {
        return Err(invalid(format!("is outside {min}..{max}")));
    }
    Ok(n)
}

fn power_of_two(key: &'static str, raw: &str, min: u32, max: u32) -> Result<u32, FormatError> {
    let n = number(key, raw, u64::from(min), u64::from(max))?;
    if !n.is_power_of_two() {
        return Err(FormatError::InvalidValue {
            key,
            value: raw.to_owned(),
            reason: "is not a power of two".into(),
        });
    }
    u32::try_from(n).map_err(|_| FormatError::InvalidValue {
        key,
        value: raw.to_owned(),
        reason: "is too large".into(),
    })
}

fn boolean(key: &'static str, raw: &str) -> Result<bool, FormatError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(FormatError::InvalidValue {
            key,
            value: raw.to_owned(),
            reason: "is not true or false".into(),
        }),
    }
}

/// Which mkfs flag set a token list is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Ext,
    Xfs,
}

/// What may follow an allowed flag.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// Nothing: the flag stands alone.
    Switch,
    /// A whole number in a range.
    Int(u64, u64),
    /// A volume label of at most this many bytes.
    Label(usize),
    /// A short word (usage type, error behaviour).
    Word,
    /// A UUID or one of `clear`, `random`, `time`.
    Uuid,
    /// ext feature names, comma-separated, each optionally negated with `^`.
    Features,
    /// `key[=value]` pairs, comma-separated, keys from the list.
    SubOptions(&'static [&'static str]),
}

const EXT_EXTENDED: &[&str] = &[
    "stride",
    "stripe_width",
    "stripe-width",
    "resize",
    "lazy_itable_init",
    "lazy_journal_init",
    "packed_meta_blocks",
    "root_owner",
    "discard",
    "nodiscard",
    "num_backup_sb",
    "quotatype",
    "encoding",
    "encoding_flags",
    "assume_storage_prezeroed",
    "orphan_file_size",
    "mmp_update_interval",
    "no_copy_xattrs",
];

const EXT_FLAGS: &[(&str, Value)] = &[
    ("-m", Value::Int(0, 50)),
    ("-O", Value::Features),
    ("-E", Value::SubOptions(EXT_EXTENDED)),
    ("-L", Value::Label(16)),
    ("-T", Value::Word),
    ("-j", Value::Switch),
    ("-J", Value::SubOptions(&["size", "fast_commit_size"])),
    ("-g", Value::Int(256, 1 << 20)),
    ("-G", Value::Int(1, 1 << 20)),
    ("-e", Value::Word),
    ("-U", Value::Uuid),
    ("-r", Value::Int(0, 1)),
    ("-K", Value::Switch),
    ("-q", Value::Switch),
];

const XFS_FLAGS: &[(&str, Value)] = &[
    (
        "-m",
        Value::SubOptions(&[
            "crc",
            "finobt",
            "uuid",
            "rmapbt",
            "reflink",
            "bigtime",
            "inobtcount",
            "autofsck",
        ]),
    ),
    ("-L", Value::Label(12)),
    ("-K", Value::Switch),
    ("-q", Value::Switch),
    (
        "-d",
        Value::SubOptions(&[
            "agcount",
            "agsize",
            "su",
            "sunit",
            "sw",
            "swidth",
            "noalign",
            "cowextsize",
            "extszinherit",
            "daxinherit",
            "projinherit",
        ]),
    ),
    (
        "-i",
        Value::SubOptions(&[
            "size",
            "maxpct",
            "align",
            "sparse",
            "attr",
            "projid32bit",
            "nrext64",
            "exchange",
        ]),
    ),
    (
        "-l",
        Value::SubOptions(&["size", "version", "sunit", "su", "lazy-count", "internal"]),
    ),
    (
        "-n",
        Value::SubOptions(&["size", "version", "ftype", "parent"]),
    ),
    ("-s", Value::SubOptions(&["size"])),
];

fn flags_of(family: Family) -> &'static [(&'static str, Value)] {
    match family {
        Family::Ext => EXT_FLAGS,
        Family::Xfs => XFS_FLAGS,
    }
}

fn check_tokens_for_any_family(tokens: &[String]) -> Result<(), FormatError> {
    // The filesystem may come from the capability at stage time, so here a
    // token list only has to be valid for some family; mkfs_args checks it
    // against the real one. When both refuse it, the family that accepted
    // more tokens is probably the one meant, so its complaint is reported.
    match (
        scan_tokens(Family::Ext, tokens),
        scan_tokens(Family::Xfs, tokens),
    ) {
        (Ok(()), _) | (_, Ok(())) => Ok(()),
        (Err((ext_at, ext_err)), Err((xfs_at, xfs_err))) => {
            Err(if xfs_at > ext_at { xfs_err } else { ext_err })
        }
    }
}

fn check_tokens(family: Family, tokens: &[String]) -> Result<(), FormatError> {
    scan_tokens(family, tokens).map_err(|(_, err)| err)
}

/// Checks tokens against one family; on failure also returns the index of
/// the refused token.
fn scan_tokens(family: Family, tokens: &[String]) -> Result<(), (usize, FormatError)> {
    let mut index = 0;
    while let Some(token) = tokens.get(index) {
        let refuse = |detail: String| FormatError::UnsafeMkfsToken {
            token: token.clone(),
            detail,
        };
        let Some((_, rule)) = flags_of(family).iter().find(|(flag, _)| flag == token) else {
            let allowed: Vec<&str> = flags_of(family).iter().map(|(f, _)| *f).collect();
            return Err((
                index,
                refuse(format!(" (allowed flags: {})", allowed.join(" "))),
            ));
        };
        index += 1;
        if matches!(rule, Value::Switch) {
            continue;
        }
        let Some(value) = tokens.get(index) else {
            return Err((index, refuse(" (it needs a value)".into())));
        };
        if let Err(why) = check_value(*rule, value) {
            return Err((
                index,
                FormatError::UnsafeMkfsToken {
                    token: value.clone(),
                    detail: format!(" as the value of {token}: {why}"),
                },
            ));
        }
        index += 1;
    }
    Ok(())
}

fn plain_chars(value: &str, extra: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(c))
}

fn check_value(rule: Value, value: &str) -> Result<(), String> {
    match rule {
        Value::Switch => Ok(()),
        Value::Int(min, max) => match value.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) && value.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(())
            }
            _ => Err(format!("expected a number in {min}..{max}")),
        },
        Value::Label(max) if value.len() <= max && plain_chars(value, ".") => Ok(()),
        Value::Label(max) => Err(format!(
            "expected a label of at most {max} letters, digits, '.', '_', '-'"
        )),
        Value::Word if value.len() <= 32 && plain_chars(value, "") => Ok(()),
        Value::Word => Err("expected a short word".into()),
        Value::Uuid => {
            let named = ["clear", "random", "time"].contains(&value);
            let uuid =
                value.len() == 36 && value.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if named || uuid {
                Ok(())
            } else {
                Err("expected a UUID, clear, random or time".into())
            }
        }
        Value::Features => {
            let ok = value.split(',').all(|f| {
                let name = f.strip_prefix('^').unwrap_or(f);
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
            if ok {
                Ok(())
            } else {
                Err("expected feature names separated by commas".into())
            }
        }
        Value::SubOptions(keys) => {
            for part in value.split(',') {
                let (key, val) = match part.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (part, None),
                };
                if !keys.contains(&key) {
                    return Err(format!(
                        "suboption {key:?} is not allowed (allowed: {})",
                        keys.join(", ")
                    ));
                }
                if let Some(v) = val {
                    if v.len() > 64 || !plain_chars(v, ".:") {
                        return Err(format!(
                            "suboption value {v:?} has characters outside letters, digits, '.', ':', '_', '-'"
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn invalid_message(err: CoreError) -> String {
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        err.to_string()
    }

    #[test]
    fn extraction_removes_keys_case_insensitively_and_canonicalises() {
        let mut params = map(&[
            ("type", "lvm"),
            ("BLOCKSIZE", "4096"),
            ("inodesize", " 512 "),
            ("ext4BigAlloc", "YES"),
            ("ext4clustersize", "65536"),
            ("mkfsOptions", "  -m 0\t-O ^has_journal,quota "),
            ("csi.storage.k8s.io/fstype", "ext4"),
        ]);
        let ctx = extract_from_params(&mut params).unwrap();
        assert_eq!(
            params,
            map(&[("type", "lvm"), ("csi.storage.k8s.io/fstype", "ext4")])
        );
        assert_eq!(
            ctx,
            map(&[
                ("blockSize", "4096"),
                ("inodeSize", "512"),
                ("ext4BigAlloc", "true"),
                ("ext4ClusterSize", "65536"),
                ("mkfsOptions", "-m 0 -O ^has_journal,quota"),
            ])
        );
        // What the controller stored, the node reads back unchanged.
        let opts = from_context(&ctx).unwrap();
        assert_eq!(opts.to_context(), ctx);
        assert_eq!(
            opts.mkfs_args(FsType::Ext4).unwrap(),
            [
                "-b",
                "4096",
                "-I",
                "512",
                "-O",
                "bigalloc",
                "-C",
                "65536",
                "-m",
                "0",
                "-O",
                "^has_journal,quota"
            ]
        );
    }

    #[test]
    fn no_keys_means_no_context_and_no_args() {
        let mut params = map(&[("type", "ebs")]);
        assert!(extract_from_params(&mut params).unwrap().is_empty());
        assert_eq!(params.len(), 1);
        let opts = from_context(&map(&[("fsType", "xfs"), ("device", "/dev/x")])).unwrap();
        assert_eq!(opts, FormatOptions::default());
        assert!(opts.mkfs_args(FsType::Xfs).unwrap().is_empty());
    }

    #[test]
    fn bad_numbers_and_booleans_name_key_and_value() {
        let cases = [
            ("blockSize", "4k", "blockSize"),
            ("blockSize", "3000", "power of two"),
            ("blockSize", "131072", "outside"),
            ("inodeSize", "-256", "whole number"),
            ("bytesPerInode", "99999999999999999999999", "too large"),
            ("numberOfInodes", "0", "outside"),
            ("ext4BigAlloc", "maybe", "true or false"),
        ];
        for (key, value, expected) in cases {
            let mut params = map(&[(key, value)]);
            let msg = invalid_message(extract_from_params(&mut params).unwrap_err());
            assert!(
                msg.contains(key) && msg.contains(expected),
                "{key}={value}: {msg}"
            );
        }
    }

    #[test]
    fn cluster_size_needs_bigalloc_and_duplicates_are_refused() {
        let mut params = map(&[("ext4ClusterSize", "16384")]);
        let msg = invalid_message(extract_from_params(&mut params).unwrap_err());
        assert!(msg.contains("ext4BigAlloc"), "{msg}");
        let mut params = map(&[("blockSize", "4096"), ("BlockSize", "1024")]);
        let msg = invalid_message(extract_from_params(&mut params).unwrap_err());
        assert!(msg.contains("more than once"), "{msg}");
    }

    #[test]
    fn unsafe_mkfs_tokens_are_refused_by_name() {
        let cases = [
            ("-F", "-F"),
            ("-m 1 -d /etc", "-d"),
            ("-E root_owner=0:0,offset=4096", "offset"),
            ("-L bad/label", "bad/label"),
            ("-O has_journal;reboot", "has_journal;reboot"),
            ("-z /tmp/undo", "-z"),
            ("-l logdev=/dev/sda", "logdev"),
            ("--force", "--force"),
            ("-m", "-m"),
            ("-S", "-S"),
        ];
        for (options, token) in cases {
            let mut params = map(&[("mkfsOptions", options)]);
            let msg = invalid_message(extract_from_params(&mut params).unwrap_err());
            assert!(
                msg.contains(&format!("{token:?}")) || msg.contains(token),
                "{options}: {msg}"
            );
            assert!(msg.contains("mkfsOptions"), "{msg}");
        }
    }

    #[test]
    fn options_are_checked_against_the_real_filesystem_at_format_time() {
        // Valid for XFS only: accepted by the controller, refused for ext4.
        let mut params = map(&[("mkfsOptions", "-m crc=1,reflink=1 -K -L data")]);
        let ctx = extract_from_params(&mut params).unwrap();
        let opts = from_context(&ctx).unwrap();
        assert_eq!(
            opts.mkfs_args(FsType::Xfs).unwrap(),
            ["-m", "crc=1,reflink=1", "-K", "-L", "data"]
        );
        let err = opts.mkfs_args(FsType::Ext4).unwrap_err();
        assert!(err.to_string().contains("for ext4"), "{err}");

        let ext_only = from_context(&map(&[
            ("bytesPerInode", "8192"),
            ("numberOfInodes", "1000"),
        ]))
        .unwrap();
        assert_eq!(
            ext_only.mkfs_args(FsType::Ext3).unwrap(),
            ["-i", "8192", "-N", "1000"]
        );
        let err = ext_only.mkfs_args(FsType::Xfs).unwrap_err();
        assert_eq!(
            err,
            FormatError::NotForFilesystem {
                key: BYTES_PER_INODE_KEY,
                fs: FsType::Xfs
            }
        );

        let bigalloc = from_context(&map(&[("ext4BigAlloc", "true")])).unwrap();
        assert!(bigalloc.mkfs_args(FsType::Ext3).is_err());

        let sizes = from_context(&map(&[("blockSize", "512"), ("inodeSize", "512")])).unwrap();
        assert_eq!(
            sizes.mkfs_args(FsType::Xfs).unwrap(),
            ["-b", "size=512", "-i", "size=512"]
        );
        assert!(
            sizes.mkfs_args(FsType::Ext4).is_err(),
            "512-byte ext blocks do not exist"
        );
        let small_inode = from_context(&map(&[("inodeSize", "128")])).unwrap();
        assert!(small_inode.mkfs_args(FsType::Xfs).is_err());
    }

    #[test]
    fn fs_types_parse() {
        assert_eq!(FsType::parse("EXT4").unwrap(), FsType::Ext4);
        assert_eq!(FsType::parse("xfs").unwrap().mkfs_program(), "mkfs.xfs");
        assert!(matches!(
            FsType::parse("btrfs"),
            Err(FormatError::UnknownFilesystem(_))
        ));
    }
}
