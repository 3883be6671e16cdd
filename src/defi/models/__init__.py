"""The models: shared `layers`, frozen `encoders`, the GFDM (`forward`), the GIDM (`inverse`) and the action
`adapter`. How they connect into a policy is `defi.policies.defi`'s business alone."""
