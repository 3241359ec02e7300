//! The immutable snapshot of the world that readers consult.

use std::sync::Arc;

use crate::dc::DcState;

/// Everything a reader needs to answer a query, frozen at one moment. Cheap to clone.
#[derive(Clone, Debug)]
pub struct View {
    datacenter: Arc<str>,
    local: DcState,
}

impl View {
    /// A view of the local datacenter `datacenter` with catalog `local`.
    pub fn new(datacenter: impl Into<Arc<str>>, local: DcState) -> Self {
        View {
            datacenter: datacenter.into(),
            local,
        }
    }

    /// The local datacenter's name.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// The local datacenter's catalog.
    pub fn local(&self) -> &DcState {
        &self.local
    }

    /// The datacenters this view knows, local first.
    pub fn datacenters(&self) -> Vec<&str> {
        vec![&*self.datacenter]
    }
}
