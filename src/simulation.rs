//! Simulations: chat-driven clinical training sessions with an AI patient — owner actions,
//! the prompts, and the responder that makes and records every AI call.

mod actions;
pub mod prompt;
mod responder;

pub use actions::SimulationActions;
pub use responder::Responder;
