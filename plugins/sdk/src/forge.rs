//! The code forge. Reads come tagged with trust; writes are proposals the
//! host checks against policy before anything reaches the repository.
pub use crate::wit::kiln::role::forge::{
    Comment, CommentProposal, DiffSide, Issue, LabelProposal, LineComment, ProposalReceipt,
    ProposalState, PullRequest, PullRequestProposal, ReviewProposal, ReviewVerdict, Severity,
};
use crate::{RoleError, wit::kiln::role::forge as raw};

/// Read an issue and its comments.
pub fn issue(number: u64) -> Result<Issue, RoleError> {
    raw::get_issue(number)
}

/// Read a pull request and its comments.
pub fn pull_request(number: u64) -> Result<PullRequest, RoleError> {
    raw::get_pull_request(number)
}

/// The unified diff of a pull request.
pub fn pull_request_diff(number: u64) -> Result<String, RoleError> {
    raw::get_pull_request_diff(number)
}

/// Propose a comment on an issue or pull request.
pub fn comment(number: u64, body: &str) -> Result<ProposalReceipt, RoleError> {
    raw::propose_comment(&CommentProposal {
        number,
        body: body.to_string(),
    })
}

/// Propose adding and removing labels.
pub fn set_labels(
    number: u64,
    add: &[&str],
    remove: &[&str],
) -> Result<ProposalReceipt, RoleError> {
    raw::propose_labels(&LabelProposal {
        number,
        add: add.iter().map(|s| s.to_string()).collect(),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    })
}

/// Propose a draft pull request from the run's branch.
pub fn propose_pull_request(proposal: &PullRequestProposal) -> Result<ProposalReceipt, RoleError> {
    raw::propose_pull_request(proposal)
}

/// Propose a review of a pull request.
pub fn review(proposal: &ReviewProposal) -> Result<ProposalReceipt, RoleError> {
    raw::propose_review(proposal)
}
