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
# The data (data.heimdall.state) lists each user's and group's policies as whole policy objects:
# a decision reads one entry per user and group and never looks policies up by name, so its cost
# does not grow with the number of policies. The bundle expands a "*" action into every action.
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

# The subject's policies: the lists of its user and of each of its groups. An array, not a set:
# deduplicating would compare whole policy objects, which costs more than it saves.
subject_policies := array.concat(
	object.get(data.heimdall.state.subjects.user, input.subject.user, []),
	[policy |
		some group in input.subject.groups
		some policy in object.get(data.heimdall.state.subjects.group, group, [])
	],
)

# Positions in subject_policies of the policies that apply to the requested tenant and action.
# The checks of applies() are written out: this is every decision's hot path, and a function
# call costs regorus more than the lookups themselves.
matching contains i if {
	some i, policy in subject_policies
	policy.actions[input.action]
	policy.resources[requested_resource]
	policy.tenants[input.tenant]
}

# "*" covers registered tenants only.
matching contains i if {
	some i, policy in subject_policies
	policy.actions[input.action]
	policy.resources[requested_resource]
	policy.all_registered
	data.heimdall.state.tenants[input.tenant]
}

denials := {subject_policies[i].name | some i in matching; subject_policies[i].effect == "deny"}

# Allowing policies by name, with their filters.
grants := {subject_policies[i].name: subject_policies[i].filters |
	some i in matching
	subject_policies[i].effect == "allow"
}

# The names of the subject's policies that deny or allow `action` on `tenant`.
denied_by(tenant, action) := {policy.name |
	some policy in subject_policies
	applies(policy, tenant, action)
	policy.effect == "deny"
}

allowed_by(tenant, action) := {policy.name |
	some policy in subject_policies
	applies(policy, tenant, action)
	policy.effect == "allow"
}

applies(policy, tenant, action) if {
	policy.actions[action]
	policy.resources[requested_resource]
	tenant_matches(policy, tenant)
}

tenant_matches(policy, tenant) if policy.tenants[tenant]

# "*" covers registered tenants only.
tenant_matches(policy, tenant) if {
	policy.all_registered
	data.heimdall.state.tenants[tenant]
}

filter_sets(_, true) := []

filter_sets(names, false) := [grants[name] | some name in names]
