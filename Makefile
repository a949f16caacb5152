# The two set-up commands of the README. Both install what they need.
.PHONY: demo test deps lint unit

CARGO ?= cargo

deps:
	@bash scripts/deps.sh

# The main job on the embedded lab default.
demo: deps
	$(CARGO) run --quiet --bin cnpilot -- demo

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every tier: unit, datapath integration (root + BPF) and end-to-end on the
# lab. Root tiers skip loudly when not root, and must run under CI=true.
# The e2e tests run the cnpilot binary that this same `cargo test` builds
# (cli has integration tests, so its binary is built with the test feature
# set); pointing them at it saves a second build with other features.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

test: lint
	CNPILOT_BIN=$(TARGET_DIR)/debug/cnpilot $(CARGO) test --workspace --no-fail-fast
	$(TARGET_DIR)/debug/cnpilot policy test recommender/seed-cases/article.yaml recommender/cases
