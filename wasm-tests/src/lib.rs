//! Host emulator (in progress)
