//! The whole conformance suite against the toy transport, found through `inventory` alone.
kombu_testkit::conformance_main!(&kombu_toy_transport::DESCRIPTOR, "toy:///conformance");
