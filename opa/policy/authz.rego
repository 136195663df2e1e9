# Heimdall's authorization policy (Rego v1).
#
# Input:  {"subject": {"user": U, "groups": [G, ...]}, "tenant": T, "action": A, "resource": R}
#         (resource defaults to "metrics").
# Output: data.heimdall.authz.decision =
#         {"allowed", "unrestricted", "filter_sets", "policies"}
#         - any matching deny policy denies (deny overrides);
#         - without a matching allow policy the answer is deny (default deny);
#         - otherwise each matching allow policy contributes one filter set (its matchers ANDed),
#           and the sets are ORed; one matching allow policy without filters makes the answer
#           unrestricted.
#         (The tenants a subject may use live in tenants.rego, package heimdall.tenants.)
#
# The data (data.heimdall.state) indexes policy names by subject and then by tenant:
#   subjects.user[U].tenants[T]  - policies of user U that name tenant T;
#   subjects.user[U].registered  - policies of user U scoped to "*" (every registered tenant);
#   and the same under subjects.group[G]; policies[NAME] holds each policy once.
# A decision reads one entry per user and group and only the policies that can apply to the
# tenant, so its cost does not grow with the number of policies. The bundle expands a "*" action
# into every action.
package heimdall.authz

import rego.v1

default requested_resource := "metrics"

requested_resource := input.resource

default decision := {"allowed": false, "unrestricted": false, "filter_sets": [], "policies": []}

decision := result if {
	count(denials) > 0
	result := {"allowed": false, "unrestricted": false, "filter_sets": [], "policies": sort(denials)}
}

decision := result if {
	count(denials) == 0
	names := sort(object.keys(grants))
	count(names) > 0
	unrestricted := count([name | some name in names; count(grants[name]) == 0]) > 0
	result := {
		"allowed": true,
		"unrestricted": unrestricted,
		"filter_sets": filter_sets(names, unrestricted),
		"policies": names,
	}
}

# The index entries of the subject: its user's and each of its groups'.
subject_entries := array.concat(
	[object.get(data.heimdall.state.subjects.user, input.subject.user, {})],
	[object.get(data.heimdall.state.subjects.group, group, {}) | some group in input.subject.groups],
)

# The policies of the requested tenant that apply to the requested action. This is
# policies_for(input.tenant, input.action) written out as rules: every decision runs it, and a
# function call costs regorus more than the lookups themselves.
matching contains name if {
	some name in scoped
	policy := data.heimdall.state.policies[name]
	policy.actions[input.action]
	policy.resources[requested_resource]
}

scoped contains name if {
	some entry in subject_entries
	some name in object.get(object.get(entry, "tenants", {}), input.tenant, [])
}

scoped contains name if {
	data.heimdall.state.tenants[input.tenant]
	some entry in subject_entries
	some name in object.get(entry, "registered", [])
}

denials := {name | some name in matching; data.heimdall.state.policies[name].effect == "deny"}

# Allowing policies by name, with their filters.
grants := {name: policy.filters |
	some name in matching
	policy := data.heimdall.state.policies[name]
	policy.effect == "allow"
}

# The names of the subject's policies that cover `tenant` and allow or deny `action` there.
policies_for(tenant, action) := {name |
	some name in scoped_to(tenant)
	policy := data.heimdall.state.policies[name]
	policy.actions[action]
	policy.resources[requested_resource]
}

# The names of the subject's policies whose scope covers `tenant`: those naming it, and those
# scoped to "*" when it is registered.
scoped_to(tenant) := named | registered if {
	named := {name |
		some entry in subject_entries
		some name in object.get(object.get(entry, "tenants", {}), tenant, [])
	}
	registered := {name |
		data.heimdall.state.tenants[tenant]
		some entry in subject_entries
		some name in object.get(entry, "registered", [])
	}
}

denied_by(tenant, action) := {name |
	some name in policies_for(tenant, action)
	data.heimdall.state.policies[name].effect == "deny"
}

allowed_by(tenant, action) := {name |
	some name in policies_for(tenant, action)
	data.heimdall.state.policies[name].effect == "allow"
}

filter_sets(_, true) := []

filter_sets(names, false) := [grants[name] | some name in names]
