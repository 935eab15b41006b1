//! The run an effect belongs to, built once into the Cedar principal and
//! repository entities every query of the run shares.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use cedar_policy::{Entities, Entity, EntityUid, RestrictedExpression};

use super::cedar::{Resource, types, uid};
use super::{Role, Trust};

/// The run an effect belongs to: the Cedar principal.
///
/// Built once per run with [`RunContext::new`] and shared by all its requests
/// (`Arc`). Fields are read-only because the run's Cedar entities are built
/// here, once: a mutable role or branch could drift from what policies see.
pub struct RunContext {
    pub(super) run_id: String,
    pub(super) role: Role,
    pub(super) repo: String,
    pub(super) trust: Trust,
    pub(super) branch: String,
    /// Whether the run's task holds text from untrusted authors (Cedar's
    /// `context.read_untrusted`).
    pub(super) read_untrusted: bool,
    /// The detection step's verdict on the run's work, once it ran
    /// (Cedar context of the effects it covers).
    pub(super) detection: Option<crate::policy::detection::DetectionContext>,
    /// Logins its outbound texts may mention (the author it answers, the
    /// actor who started it).
    pub(super) mentions: Vec<String>,
    /// The issue its pull request body may close (an implementation run's).
    pub(super) closes: Option<u64>,
    /// The principal and repo entities; an error is kept and turned into a
    /// fail-closed denial by the gate.
    pub(super) cedar: Result<RunEntities, String>,
    /// Entity stores with one resource added, for resources whose attributes
    /// depend on their id alone (issue, path, branch): a run acts on the same
    /// few again and again, and building a store is most of a decision's cost.
    pub(super) resource_cache: Mutex<Vec<(EntityUid, Entities)>>,
}

/// How many resource entity stores a run keeps.
pub(super) const RESOURCE_CACHE: usize = 16;

#[derive(Clone)]
pub(super) struct RunEntities {
    pub(super) principal: EntityUid,
    pub(super) repo: EntityUid,
    /// Repo and principal; each query clones it and adds its resource.
    pub(super) base: Entities,
}

impl RunContext {
    /// A run: its id in the store, role, `owner/name` repository, trust of
    /// the actor that triggered it, and its own branch (`kiln/...` for
    /// writing roles; the workspace is checked out on it).
    pub fn new(
        run_id: impl Into<String>,
        role: Role,
        repo: impl Into<String>,
        trust: Trust,
        branch: impl Into<String>,
    ) -> Self {
        let (run_id, repo, branch) = (run_id.into(), repo.into(), branch.into());
        let cedar = run_entities(&run_id, role, &repo, trust, &branch);
        Self {
            run_id,
            role,
            repo,
            trust,
            branch,
            read_untrusted: false,
            detection: None,
            mentions: Vec::new(),
            closes: None,
            cedar,
            resource_cache: Mutex::new(Vec::new()),
        }
    }

    /// The same run, saying whether its task holds text from untrusted
    /// authors (issue body, comments, review threads): a trusted trigger
    /// does not make a stranger's words trusted, so policies see both.
    pub fn with_read_untrusted(mut self, read_untrusted: bool) -> Self {
        self.read_untrusted = read_untrusted;
        self
    }

    /// The same run, saying whom its outbound texts may mention and which
    /// issue its pull request body may close; everyone else's mention and
    /// every other closing keyword is neutralised.
    pub fn with_audience(mut self, mentions: Vec<String>, closes: Option<u64>) -> Self {
        self.mentions = mentions;
        self.closes = closes;
        self
    }

    /// Whether the run's task holds text from untrusted authors.
    pub fn read_untrusted(&self) -> bool {
        self.read_untrusted
    }

    /// The same run with the detection step's verdict, for deciding the
    /// effects it covers (a new context: the shared one stays as it was).
    pub fn with_detection(&self, detection: crate::policy::detection::DetectionContext) -> Self {
        // The entities are cloned, not rebuilt: building them runs Cedar,
        // which needs a stack it can measure (not a wasmtime fiber's).
        Self {
            run_id: self.run_id.clone(),
            role: self.role,
            repo: self.repo.clone(),
            trust: self.trust,
            branch: self.branch.clone(),
            read_untrusted: self.read_untrusted,
            detection: Some(detection),
            mentions: self.mentions.clone(),
            closes: self.closes,
            cedar: self.cedar.clone(),
            resource_cache: Mutex::new(Vec::new()),
        }
    }

    /// The run's entity store with `resource` added, from the cache when its
    /// attributes depend on its id alone. A poisoned lock only skips the cache.
    pub(super) fn entities_with(
        &self,
        run: &RunEntities,
        resource: Resource,
    ) -> Result<Entities, String> {
        if resource.cacheable
            && let Ok(cache) = self.resource_cache.lock()
            && let Some((_, hit)) = cache.iter().find(|(uid, _)| *uid == resource.uid)
        {
            return Ok(hit.clone());
        }
        let entity = Entity::new(
            resource.uid.clone(),
            resource
                .attrs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            HashSet::from([run.repo.clone()]),
        )
        .map_err(|e| e.to_string())?;
        let entities = run
            .base
            .clone()
            .add_entities([entity], None)
            .map_err(|e| e.to_string())?;
        if resource.cacheable
            && let Ok(mut cache) = self.resource_cache.lock()
        {
            if cache.len() >= RESOURCE_CACHE {
                cache.remove(0);
            }
            cache.push((resource.uid, entities.clone()));
        }
        Ok(entities)
    }

    /// The run's id in the store.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The role it plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// `owner/name` of the repository.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// Trust of the actor that triggered it.
    pub fn trust(&self) -> Trust {
        self.trust
    }

    /// The run's own branch.
    pub fn branch(&self) -> &str {
        &self.branch
    }
}

impl fmt::Debug for RunContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunContext")
            .field("run_id", &self.run_id)
            .field("role", &self.role)
            .field("repo", &self.repo)
            .field("trust", &self.trust)
            .field("branch", &self.branch)
            .field("read_untrusted", &self.read_untrusted)
            .field("detection", &self.detection)
            .field("mentions", &self.mentions)
            .field("closes", &self.closes)
            .finish()
    }
}

impl PartialEq for RunContext {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.run_id,
            self.role,
            &self.repo,
            self.trust,
            &self.branch,
            self.read_untrusted,
            &self.detection,
        ) == (
            &other.run_id,
            other.role,
            &other.repo,
            other.trust,
            &other.branch,
            other.read_untrusted,
            &other.detection,
        )
    }
}

impl Eq for RunContext {}

fn run_entities(
    run_id: &str,
    role: Role,
    repo: &str,
    trust: Trust,
    branch: &str,
) -> Result<RunEntities, String> {
    let types = types()?;
    let repo_uid = uid(&types.repo, repo);
    let repo_entity = Entity::new(
        repo_uid.clone(),
        HashMap::from([(
            "name".to_owned(),
            RestrictedExpression::new_string(repo.to_owned()),
        )]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    let principal = uid(&types.run, run_id);
    let principal_entity = Entity::new(
        principal.clone(),
        HashMap::from([
            (
                "role".to_owned(),
                RestrictedExpression::new_string(role.as_str().to_owned()),
            ),
            (
                "repo".to_owned(),
                RestrictedExpression::new_entity_uid(repo_uid.clone()),
            ),
            (
                "trust".to_owned(),
                RestrictedExpression::new_string(trust.as_str().to_owned()),
            ),
            (
                "branch".to_owned(),
                RestrictedExpression::new_string(branch.to_owned()),
            ),
        ]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    let base = Entities::from_entities([repo_entity, principal_entity], None)
        .map_err(|e| e.to_string())?;
    Ok(RunEntities {
        principal,
        repo: repo_uid,
        base,
    })
}
