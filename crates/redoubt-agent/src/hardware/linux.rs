//! Building blocks of the mainline-Linux backend (issue 5): reading and changing real
//! kernel state through `/sys`, `/dev` and `/proc`, whose roots are parameters so that
//! tests point them at fake trees. Not yet selectable with `--hardware linux`: the
//! backend is assembled from these parts once all capabilities have them.

pub mod binding;
pub mod media;
pub mod netfilter;
pub mod rfkill;
