# Evaluate the NixOS modules with nixpkgs' lib only (no nixpkgs needed):
#   make eval-nix NIXPKGS_LIB=/path/to/nixpkgs.lib     # units + manifest of every host, as JSON
#   make update-golden NIXPKGS_LIB=/path/to/nixpkgs.lib # after changing nixos/ or hosts/
# NIXPKGS_LIB is a checkout of nixpkgs' lib (e.g. github:nix-community/nixpkgs.lib); by
# default ../shared/nixpkgs-lib next to the repository, when it exists (as on the CI machines).

NIXPKGS_LIB ?= $(wildcard $(abspath $(CURDIR)/../shared/nixpkgs-lib))
NIX_TMP := $(shell mktemp -d -u /tmp/model-pull-nix.XXXXXX)
NIX_EVAL = NIX_STATE_DIR=$(NIX_TMP) NIX_CONFIG="experimental-features = nix-command" \
	nix-instantiate --eval --strict --json tests/nix/eval.nix \
	--arg nixpkgsLib "$(abspath $(NIXPKGS_LIB))" -A golden

.PHONY: eval-nix update-golden check-nixpkgs-lib

check-nixpkgs-lib:
	@test -n "$(NIXPKGS_LIB)" && test -f "$(NIXPKGS_LIB)/lib/default.nix" || \
	  { echo "error: set NIXPKGS_LIB to a checkout of nixpkgs' lib (a directory with lib/default.nix)" >&2; exit 2; }

eval-nix: check-nixpkgs-lib
	@$(NIX_EVAL) | python3 -m json.tool --indent 2; rc=$$?; rm -rf $(NIX_TMP); exit $$rc

update-golden: check-nixpkgs-lib
	@$(NIX_EVAL) | python3 -m json.tool --indent 2 > tests/nix/golden.json.tmp && \
	  mv tests/nix/golden.json.tmp tests/nix/golden.json; rc=$$?; rm -rf $(NIX_TMP); \
	  echo "wrote tests/nix/golden.json"; exit $$rc
