//! Board support for the glasses.
#![no_std]
