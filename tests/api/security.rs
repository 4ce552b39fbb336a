//! Security over the real HTTP API: keys, ownership on every root field, limits, egress.

mod budgets;
mod drift;
mod egress;
mod erasure;
mod fuzz;
mod keys;
mod ownership;
mod sockets;
