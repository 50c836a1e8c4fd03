//! The generation endpoints, written once: each one's path, its `gen_ai.operation.name` and
//! the prefix of its response ids. The router, the handlers, auth (a 401 still gets its
//! journey) and the journey all read them from here.

use wayfinder_trace::names::operation;

/// A generation endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// The route.
    pub(crate) path: &'static str,
    /// `gen_ai.operation.name`.
    pub(crate) operation: &'static str,
    /// Response ids are `{id_prefix}-…`.
    pub(crate) id_prefix: &'static str,
}

/// `POST /v1/chat/completions`.
pub(crate) const CHAT: Endpoint = Endpoint {
    path: "/v1/chat/completions",
    operation: operation::CHAT,
    id_prefix: "chatcmpl",
};

/// `POST /v1/completions`.
pub(crate) const COMPLETIONS: Endpoint = Endpoint {
    path: "/v1/completions",
    operation: operation::TEXT_COMPLETION,
    id_prefix: "cmpl",
};

/// The generation endpoint at `path`, if it is one.
pub(crate) fn generation(path: &str) -> Option<Endpoint> {
    [CHAT, COMPLETIONS].into_iter().find(|e| e.path == path)
}
