//! Import, pack and write .glint files.
