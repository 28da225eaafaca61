//! Access-mode rules shared by the providers whose volumes can be attached
//! to several nodes at once (EBS Multi-Attach, ECS multi-attach disks).
//!
//! The rules are the ones the EBS and Alibaba Cloud CSI drivers apply: a
//! volume serves a multi-node access mode only when it was created for
//! multi-attach, the multi-node *writer* modes only as raw block devices
//! (no ordinary filesystem survives being mounted read-write on two nodes),
//! and the multi-node reader mode with a filesystem too.

use crate::error::{ProviderError, Result};
use crate::types::{AccessMode, AccessType, Capability};

/// True for the access modes that publish a volume on several nodes.
pub fn is_multi_node(mode: AccessMode) -> bool {
    matches!(
        mode,
        AccessMode::MultiNodeReaderOnly
            | AccessMode::MultiNodeSingleWriter
            | AccessMode::MultiNodeMultiWriter
    )
}

/// True for the multi-node modes that write (block volumes only).
pub fn is_multi_node_writer(mode: AccessMode) -> bool {
    matches!(
        mode,
        AccessMode::MultiNodeSingleWriter | AccessMode::MultiNodeMultiWriter
    )
}

/// Why `capability` cannot be served by a volume that is (`multi_attach`)
/// or is not multi-attach, if it cannot.
pub fn multi_node_refusal(capability: &Capability, multi_attach: bool) -> Option<String> {
    let mode = capability.access_mode();
    if !is_multi_node(mode) {
        return None;
    }
    let name = mode.as_str_name();
    if !multi_attach {
        return Some(format!(
            "access mode {name} needs a multi-attach volume (StorageClass parameter multiAttach: \"true\")"
        ));
    }
    if is_multi_node_writer(mode) && capability.access_type() != AccessType::Block {
        return Some(format!(
            "access mode {name} is served for block volumes only: a filesystem written from several nodes at once is corrupted; use MULTI_NODE_READER_ONLY for a shared filesystem"
        ));
    }
    None
}

/// Checks every capability of a create request against the multi-node
/// rules; `InvalidArgument` naming the mode and the rule otherwise.
pub fn check_multi_node(capabilities: &[Capability], multi_attach: bool) -> Result<()> {
    match capabilities
        .iter()
        .find_map(|c| multi_node_refusal(c, multi_attach))
    {
        Some(why) => Err(ProviderError::invalid_argument(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn cap(access: AccessType, mode: AccessMode) -> Capability {
        Capability {
            access_type: access as i32,
            access_mode: mode as i32,
            fs_type: String::new(),
        }
    }

    #[test]
    fn multi_node_modes_follow_the_rules() {
        use AccessMode::*;
        use AccessType::{Block, Mount};
        // (capability, multi-attach volume, refused)
        let cases = [
            (cap(Mount, SingleNodeWriter), false, false),
            (cap(Block, SingleNodeWriter), true, false),
            (cap(Mount, MultiNodeReaderOnly), false, true),
            (cap(Mount, MultiNodeReaderOnly), true, false),
            (cap(Block, MultiNodeReaderOnly), true, false),
            (cap(Mount, MultiNodeMultiWriter), true, true),
            (cap(Mount, MultiNodeSingleWriter), true, true),
            (cap(Block, MultiNodeMultiWriter), true, false),
            (cap(Block, MultiNodeSingleWriter), true, false),
            (cap(Block, MultiNodeMultiWriter), false, true),
        ];
        for (c, multi, refused) in cases {
            let got = multi_node_refusal(&c, multi);
            assert_eq!(
                got.is_some(),
                refused,
                "{c:?} multi_attach={multi}: {got:?}"
            );
            if let Some(why) = got {
                assert!(why.contains(c.access_mode().as_str_name()), "{why}");
            }
        }
        let err = check_multi_node(&[cap(Mount, MultiNodeMultiWriter)], true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("block volumes only"), "{err}");
    }
}
