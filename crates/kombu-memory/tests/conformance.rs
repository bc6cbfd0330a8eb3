//! The shared conformance suite against the memory transport.
kombu_testkit::conformance_main!(&kombu_memory::DESCRIPTOR, "memory:///conformance");
