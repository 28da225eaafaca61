//! The fake's log of attach and detach operations per ECS instance, and what
//! it says about concurrency.
//!
//! The log is ordered by a sequence number handed out under the fake's lock,
//! not by timestamps: a start is logged when AttachDisk/DetachDisk is
//! accepted, an end when the fake applies the state change (`In_use`, or
//! `Available` after a detach). The fake applies changes lazily, but always
//! before it accepts anything else and in the order they fell due, so no
//! start can slip in between an operation's due instant and its logged end:
//! the sequence order is the order of the fake's own clock. Tests can then
//! ask "how many instances were busy at once" without asserting on
//! wall-clock time.

use std::collections::HashMap;

/// Which operation an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// AttachDisk until the disk is `In_use`.
    Attach,
    /// DetachDisk until the disk is `Available`.
    Detach,
}

/// Whether an event opens or closes an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpEdge {
    /// ECS accepted the call.
    Start,
    /// The disk reached the operation's final state.
    End,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpEvent {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// The ECS instance the operation runs on.
    pub instance: String,
    /// The disk being attached or detached.
    pub disk_id: String,
    /// Attach or detach.
    pub kind: OpKind,
    /// Start or end.
    pub edge: OpEdge,
}

/// What a stretch of the log says about concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpConcurrency {
    /// Operations started.
    pub started: usize,
    /// Operations started but not ended by the end of the stretch.
    pub unfinished: usize,
    /// Most distinct instances with an operation in flight at one moment:
    /// equal to the number of instances when none waited behind another.
    pub peak_instances: usize,
    /// Most operations in flight on one instance at one moment (ECS allows 1).
    pub max_per_instance: usize,
}

impl OpConcurrency {
    /// Replays `events` in sequence order. An end without a start in the
    /// stretch (the stretch began mid-operation) is ignored.
    pub fn of(events: &[OpEvent]) -> Self {
        let mut ordered: Vec<&OpEvent> = events.iter().collect();
        ordered.sort_by_key(|e| e.seq);
        let mut in_flight: HashMap<&str, usize> = HashMap::new();
        let mut open_disks: HashMap<&str, &str> = HashMap::new();
        let mut result = Self::default();
        for event in ordered {
            match event.edge {
                OpEdge::Start => {
                    result.started += 1;
                    open_disks.insert(&event.disk_id, &event.instance);
                    let count = in_flight.entry(&event.instance).or_default();
                    *count += 1;
                    result.max_per_instance = result.max_per_instance.max(*count);
                    let busy = in_flight.values().filter(|c| **c > 0).count();
                    result.peak_instances = result.peak_instances.max(busy);
                }
                OpEdge::End => {
                    let Some(instance) = open_disks.remove(event.disk_id.as_str()) else {
                        continue;
                    };
                    if let Some(count) = in_flight.get_mut(instance) {
                        *count = count.saturating_sub(1);
                    }
                }
            }
        }
        result.unfinished = open_disks.len();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(entries: &[(&str, &str, OpEdge)]) -> Vec<OpEvent> {
        entries
            .iter()
            .enumerate()
            .map(|(seq, (instance, disk, edge))| OpEvent {
                seq: seq as u64,
                instance: (*instance).to_owned(),
                disk_id: (*disk).to_owned(),
                kind: OpKind::Attach,
                edge: *edge,
            })
            .collect()
    }

    use OpEdge::{End, Start};

    #[test]
    fn serialized_operations_peak_at_one_instance() {
        let c = OpConcurrency::of(&log(&[
            ("i-1", "d-1", Start),
            ("i-1", "d-1", End),
            ("i-2", "d-2", Start),
            ("i-2", "d-2", End),
            ("i-1", "d-3", Start),
            ("i-1", "d-3", End),
        ]));
        assert_eq!(
            c,
            OpConcurrency {
                started: 3,
                unfinished: 0,
                peak_instances: 1,
                max_per_instance: 1,
            }
        );
    }

    #[test]
    fn overlapping_instances_are_counted_once_each() {
        let c = OpConcurrency::of(&log(&[
            ("i-1", "d-1", Start),
            ("i-2", "d-2", Start),
            ("i-3", "d-3", Start),
            ("i-2", "d-2", End),
            ("i-2", "d-4", Start),
            ("i-1", "d-1", End),
            ("i-3", "d-3", End),
        ]));
        assert_eq!(c.peak_instances, 3);
        assert_eq!(c.max_per_instance, 1);
        assert_eq!(c.unfinished, 1);
    }

    #[test]
    fn two_operations_on_one_instance_are_caught() {
        let c = OpConcurrency::of(&log(&[
            ("i-1", "d-1", Start),
            ("i-1", "d-2", Start),
            ("i-1", "d-1", End),
            ("i-1", "d-2", End),
        ]));
        assert_eq!(c.max_per_instance, 2);
        assert_eq!(c.peak_instances, 1);
    }

    #[test]
    fn order_comes_from_the_sequence_not_the_slice() {
        let mut events = log(&[
            ("i-1", "d-1", Start),
            ("i-1", "d-1", End),
            ("i-2", "d-2", Start),
        ]);
        events.reverse();
        assert_eq!(OpConcurrency::of(&events).peak_instances, 1);
    }

    #[test]
    fn an_end_from_before_the_stretch_is_ignored() {
        // Counting the stray end would hide the overlap of d-1 and d-2.
        let c = OpConcurrency::of(&log(&[
            ("i-1", "d-1", Start),
            ("i-1", "d-0", End),
            ("i-1", "d-2", Start),
        ]));
        assert_eq!(c.max_per_instance, 2);
        assert_eq!(c.started, 2);
    }
}
