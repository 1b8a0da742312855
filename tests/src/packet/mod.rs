//! BPF_PROG_TEST_RUN fixtures (to be written)
