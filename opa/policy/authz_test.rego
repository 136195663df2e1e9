# Tests of authz.rego, runnable with `opa test opa/policy` and, in CI, through regorus.
package heimdall.authz_test

import rego.v1

import data.heimdall.authz
import data.heimdall.tenants

users := {
	"alice": ["alice-acme-prod", "alice-acme-staging"],
	"bob": ["bob-everything"],
	"carol": ["carol-acme", "carol-deny-acme"],
	"dave": ["dave-team-env"],
	"erin": ["erin-unregistered"],
}

groups := {
	"developers": ["developers-acme"],
	"auditors": ["auditors-deny-filtered"],
}

all_actions := ["read", "write", "rules:read", "rules:write", "alerts:read", "*"]

policies := {
	"alice-acme-prod": policy("allow", ["read"], ["acme"], false, ["env=\"prod\""]),
	"alice-acme-staging": policy("allow", ["read"], ["acme"], false, ["env=\"staging\""]),
	"bob-everything": policy("allow", all_actions, [], true, []),
	"carol-acme": policy("allow", ["read"], ["acme"], false, []),
	"carol-deny-acme": policy("deny", ["read"], ["acme"], false, []),
	"dave-team-env": policy("allow", ["read"], ["acme"], false, ["team=\"a\"", "env=\"prod\""]),
	"erin-unregistered": policy("allow", ["read"], ["initech"], false, []),
	"developers-acme": policy("allow", ["read", "write"], ["acme"], false, ["team=\"dev\""]),
	"auditors-deny-filtered": policy("deny", ["read"], ["acme"], false, ["env=\"prod\""]),
}

# The layout the bundle builder writes: policies once by name, and per subject the names of its
# policies by tenant, plus those scoped to "*".
fixture := {
	"tenants": {"acme": {"name": "Acme Corp"}, "globex": {"name": "Globex"}},
	"policies": {name: object.union(spec, {"name": name}) | some name, spec in policies},
	"subjects": {
		"user": {user: entry(names) | some user, names in users},
		"group": {group: entry(names) | some group, names in groups},
	},
}

entry(names) := {
	"tenants": {tenant: sort([name | some name in names; policies[name].tenants[tenant]]) |
		some named in names
		some tenant, _ in policies[named].tenants
	},
	"registered": sort([name | some name in names; policies[name].all_registered]),
}

policy(effect, actions, tenants, all_registered, filters) := {
	"effect": effect,
	"actions": {action: true | some action in actions},
	"tenants": {tenant: true | some tenant in tenants},
	"all_registered": all_registered,
	"resources": {"metrics": true},
	"filters": filters,
}

decide(user, groups, tenant, action) := result if {
	result := authz.decision with data.heimdall.state as fixture
		with input as {"subject": {"user": user, "groups": groups}, "tenant": tenant, "action": action}
}

test_allow_by_user if {
	decide("carol", [], "globex", "read").allowed == false
	d := decide("dave", [], "acme", "read")
	d.allowed
	d.filter_sets == [["team=\"a\"", "env=\"prod\""]]
}

test_allow_by_group if {
	d := decide("nobody", ["developers"], "acme", "write")
	d.allowed
	d.filter_sets == [["team=\"dev\""]]
	d.policies == ["developers-acme"]
}

test_deny_overrides_allow if {
	d := decide("carol", [], "acme", "read")
	not d.allowed
	d.policies == ["carol-deny-acme"]
}

test_deny_with_filters_still_denies if {
	d := decide("alice", ["auditors"], "acme", "read")
	not d.allowed
	d.filter_sets == []
}

test_wildcard_covers_registered_tenants_only if {
	decide("bob", [], "globex", "read").allowed
	decide("bob", [], "acme", "rules:write").allowed
	not decide("bob", [], "initech", "read").allowed
}

test_explicit_unregistered_tenant_is_allowed if {
	decide("erin", [], "initech", "read").allowed
}

test_wrong_action_is_denied if {
	not decide("alice", [], "acme", "write").allowed
}

test_wrong_tenant_is_denied if {
	not decide("alice", [], "globex", "read").allowed
}

test_unknown_subject_is_denied_by_default if {
	d := decide("mallory", ["strangers"], "acme", "read")
	d == {"allowed": false, "unrestricted": false, "filter_sets": [], "policies": []}
}

test_empty_filters_mean_unrestricted if {
	d := decide("bob", [], "acme", "read")
	d.unrestricted
	d.filter_sets == []
}

test_two_allows_on_the_same_label_give_two_sets if {
	d := decide("alice", [], "acme", "read")
	d.allowed
	not d.unrestricted
	d.filter_sets == [["env=\"prod\""], ["env=\"staging\""]]
}

test_two_allows_on_different_labels_give_two_sets if {
	d := decide("dave", ["developers"], "acme", "read")
	d.filter_sets == [["team=\"a\"", "env=\"prod\""], ["team=\"dev\""]]
	d.policies == ["dave-team-env", "developers-acme"]
}

test_one_unrestricted_allow_wins_over_filtered_ones if {
	d := decide("bob", ["developers"], "acme", "read")
	d.unrestricted
	d.filter_sets == []
}

test_accessible_tenants if {
	alice := tenants.accessible with data.heimdall.state as fixture
		with input as {"subject": {"user": "alice", "groups": ["developers"]}, "action": "read"}
	alice == {"acme"}
	everything := tenants.accessible with data.heimdall.state as fixture
		with input as {"subject": {"user": "bob", "groups": []}, "action": "read"}
	everything == {"acme", "globex"}
	erin := tenants.accessible with data.heimdall.state as fixture
		with input as {"subject": {"user": "erin", "groups": []}, "action": "read"}
	erin == {"initech"}
}
