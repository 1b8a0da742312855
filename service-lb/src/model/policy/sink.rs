//! The seam between the policy model and whatever programs it (the kernel maps' policy
//! writer, a fake in tests). The model stays pure: the daemon calls a [`PolicySink`] with
//! what [`PolicyModel::recompute`] reported.

use super::{PolicyChanges, PolicyModel};

/// Receives compiled pod policies. Implementations keep their own index of what they
/// programmed (a removed pod is no longer in the model, so its addresses come from there).
pub trait PolicySink {
    /// Programs the pods `changes` names: each `updated` key from
    /// [`PolicyModel::pod_policy`], each `removed` key deleted. Either all of it takes
    /// effect or an error is returned and the previous programming keeps serving.
    fn apply(&mut self, model: &PolicyModel, changes: &PolicyChanges) -> anyhow::Result<()>;

    /// Makes the programmed state equal to every pod the model holds compiled, deleting
    /// anything else (start-up and periodic resync).
    fn resync(&mut self, model: &PolicyModel) -> anyhow::Result<()>;
}

/// A sink that programs nothing (policy enforcement off, or no kernel in a test).
#[derive(Debug, Default)]
pub struct NoPolicySink;

impl PolicySink for NoPolicySink {
    fn apply(&mut self, _model: &PolicyModel, _changes: &PolicyChanges) -> anyhow::Result<()> {
        Ok(())
    }

    fn resync(&mut self, _model: &PolicyModel) -> anyhow::Result<()> {
        Ok(())
    }
}
