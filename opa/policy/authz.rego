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
# The data (data.heimdall.state) indexes policies by subject, so a decision looks only at the policies
# of the subject's user id and groups: its cost does not grow with the number of policies.
package heimdall.authz

import rego.v1

default requested_resource := "metrics"

requested_resource := input.resource

default decision := {"allowed": false, "unrestricted": false, "filter_sets": [], "policies": []}

decision := result if {
	denials := denied_by(input.tenant, input.action)
	count(denials) > 0
	result := {"allowed": false, "unrestricted": false, "filter_sets": [], "policies": sort(denials)}
}

decision := result if {
	count(denied_by(input.tenant, input.action)) == 0
	names := sort(allowed_by(input.tenant, input.action))
	count(names) > 0
	unrestricted := count([name | some name in names; count(data.heimdall.state.policies[name].filters) == 0]) > 0
	result := {
		"allowed": true,
		"unrestricted": unrestricted,
		"filter_sets": filter_sets(names, unrestricted),
		"policies": names,
	}
}

subject_policies contains name if {
	some name in data.heimdall.state.subjects.user[input.subject.user]
}

subject_policies contains name if {
	some group in input.subject.groups
	some name in data.heimdall.state.subjects.group[group]
}

denied_by(tenant, action) := {name |
	some name in subject_policies
	applies(name, tenant, action)
	data.heimdall.state.policies[name].effect == "deny"
}

allowed_by(tenant, action) := {name |
	some name in subject_policies
	applies(name, tenant, action)
	data.heimdall.state.policies[name].effect == "allow"
}

applies(name, tenant, action) if {
	policy := data.heimdall.state.policies[name]
	action_matches(policy, action)
	tenant_matches(policy, tenant)
	policy.resources[requested_resource]
}

action_matches(policy, action) if policy.actions[action]

action_matches(policy, _) if policy.actions["*"]

tenant_matches(policy, tenant) if policy.tenants[tenant]

# "*" covers registered tenants only.
tenant_matches(policy, tenant) if {
	policy.all_registered
	data.heimdall.state.tenants[tenant]
}

filter_sets(_, true) := []

filter_sets(names, false) := [data.heimdall.state.policies[name].filters | some name in names]
