//! Architecture configs, weight-name maps and chat templates.
