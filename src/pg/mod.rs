//! PostgreSQL knowledge we need: the settings that make a server require our login
//! certificate (`settings`), throwaway clusters for tests, the demo and the bench
//! (`cluster`), and the few wire messages the agent and gateway must speak (`wire`).

pub mod cluster;
pub mod settings;
pub mod wire;
