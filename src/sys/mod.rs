//! The only place with `unsafe`.
#![allow(unsafe_code)]
