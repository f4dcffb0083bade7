pub mod clock;
pub mod counters;
pub mod deadline;
pub mod tracker;
