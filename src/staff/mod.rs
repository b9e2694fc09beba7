//! Staff: moderators and clinicians, the people with rights over rooms.
//!
//! - `token`: minting and verifying the signed staff tokens that the
//!   `hearth token` subcommand prints and that `hello.auth` carries. Pure: no
//!   I/O beyond reading `HEARTH_STAFF_SECRET` when asked to, no hub state.
//!
//! This module decides who a staff member is; what they may do in a room is
//! the hub's business.

pub mod token;
