//! The Researcher side of the SDK: [`Researcher`], a stateful session that proposes experiments.

use std::cell::RefCell;

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use super::bindings::imports::trex::plugin::types as wit_types;
use super::bindings::researcher::exports::trex::plugin::researcher_api as wit;
use super::{PluginError, PluginMeta};
use crate::types::{Outcome, Proposal, ResearchContext, TaskBrief};

/// A Researcher policy: one session per search run, asked for proposals and told outcomes.
///
/// ```
/// use trex_sdk::guest::{PluginError, Researcher};
/// use trex_sdk::types::{Proposal, ResearchContext, TaskBrief, TrainRecipe};
///
/// /// Proposes the same recipe with a doubled learning rate each time.
/// struct Doubler { lr: f64 }
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct Config { start_lr: f64 }
///
/// impl Researcher for Doubler {
///     type Config = Config;
///     const NAME: &'static str = "doubler";
///     const DESCRIPTION: &'static str = "Doubles the learning rate every proposal.";
///
///     fn open(config: Config, _task: TaskBrief) -> Result<Self, PluginError> {
///         Ok(Doubler { lr: config.start_lr })
///     }
///
///     fn propose(&mut self, _context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError> {
///         let mut out = Vec::new();
///         for _ in 0..max {
///             self.lr *= 2.0;
///             let train_recipe = TrainRecipe { learning_rate: self.lr, ..TrainRecipe::default() };
///             out.push(Proposal { data_recipe: Default::default(), train_recipe, rationale: "higher lr".into() });
///         }
///         Ok(out)
///     }
/// }
///
/// trex_sdk::export_researcher!(Doubler);
/// ```
pub trait Researcher: Sized + 'static {
    /// The config; its schema is published.
    type Config: DeserializeOwned + Serialize + JsonSchema;
    /// Plugin name (must equal the manifest's `name`).
    const NAME: &'static str;
    /// One paragraph for `trex-host plugins inspect`.
    const DESCRIPTION: &'static str;

    /// Start a session for a task.
    fn open(config: Self::Config, task: TaskBrief) -> Result<Self, PluginError>;

    /// Propose up to `max` child experiments of `context.node`.
    fn propose(&mut self, context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError>;

    /// Learn an experiment's outcome. Defaults to ignoring it.
    fn observe(&mut self, outcome: Outcome) -> Result<(), PluginError> {
        let _ = outcome;
        Ok(())
    }
}

/// The resource representation of a session: the policy behind a `RefCell`, because the
/// component model hands out shared references to resources.
#[doc(hidden)]
#[derive(Debug)]
pub struct __Session<T>(RefCell<T>);

fn parse<D: DeserializeOwned>(what: &str, text: &str) -> Result<D, PluginError> {
    serde_json::from_str(text).map_err(|e| PluginError::field(what, format!("host sent an invalid {what}: {e}")))
}

impl<T: Researcher> wit::GuestSession for __Session<T> {
    fn open(config: String, task: String) -> Result<wit::Session, wit_types::PluginError> {
        super::install_panic_hook();
        let config = super::parse_config::<T::Config>(&config)?;
        let task: TaskBrief = parse("task", &task)?;
        Ok(wit::Session::new(__Session(RefCell::new(T::open(config, task)?))))
    }

    fn propose(&self, context: String, max: u32) -> Result<Vec<String>, wit_types::PluginError> {
        let context: ResearchContext = parse("context", &context)?;
        let proposals = self.0.borrow_mut().propose(context, max)?;
        proposals
            .iter()
            .map(|p| {
                serde_json::to_string(p)
                    .map_err(|e| PluginError::new(format!("proposal does not serialize: {e}")).into())
            })
            .collect()
    }

    fn observe(&self, outcome: String) -> Result<(), wit_types::PluginError> {
        let outcome: Outcome = parse("outcome", &outcome)?;
        Ok(self.0.borrow_mut().observe(outcome)?)
    }
}

#[doc(hidden)]
pub fn __describe<T: Researcher>(version: &'static str) -> wit_types::PluginInfo {
    super::install_panic_hook();
    let meta = PluginMeta { name: T::NAME, version, description: T::DESCRIPTION };
    super::info::<T::Config>(&meta, wit_types::PluginKind::Researcher)
}

#[doc(hidden)]
pub fn __validate<T: Researcher>(config: String) -> Result<String, wit_types::PluginError> {
    super::install_panic_hook();
    super::validate_config::<T::Config>(&config).map_err(Into::into)
}

/// Export a [`Researcher`] implementation as this component's `researcher` world.
#[macro_export]
macro_rules! export_researcher {
    ($ty:ty) => {
        const _: () = {
            struct __TrexResearcherExport;
            impl $crate::guest::bindings::researcher::exports::trex::plugin::researcher_api::Guest for __TrexResearcherExport {
                type Session = $crate::guest::researcher::__Session<$ty>;
                fn describe() -> $crate::guest::bindings::imports::trex::plugin::types::PluginInfo {
                    $crate::guest::researcher::__describe::<$ty>(env!("CARGO_PKG_VERSION"))
                }
                fn validate_config(config: String) -> Result<String, $crate::guest::bindings::imports::trex::plugin::types::PluginError> {
                    $crate::guest::researcher::__validate::<$ty>(config)
                }
            }
            $crate::guest::bindings::researcher::export_researcher_world!(__TrexResearcherExport with_types_in $crate::guest::bindings::researcher);
        };
    };
}
