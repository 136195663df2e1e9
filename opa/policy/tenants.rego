# The tenants a subject may use for an action (auto resolution when a request names none).
#
# Input:  {"subject": {"user": U, "groups": [G, ...]}, "action": A}
# Output: data.heimdall.tenants.accessible = the set of tenant ids.
#
# Kept out of package heimdall.authz: it looks at every registered tenant, and a decision must
# not pay for that.
package heimdall.tenants

import rego.v1

import data.heimdall.authz

accessible contains tenant if {
	some tenant in candidates
	count(authz.denied_by(tenant, input.action)) == 0
	count(authz.allowed_by(tenant, input.action)) > 0
}

# Registered tenants, and those the subject's policies name.
candidates contains tenant if {
	some tenant, _ in data.heimdall.state.tenants
}

candidates contains tenant if {
	some policy in authz.subject_policies
	some tenant, _ in policy.tenants
}
