# The tenants a subject may use for an action (auto resolution when a request names none).
#
# Input:  {"subject": {"user": U, "groups": [G, ...]}, "action": A}
# Output: data.heimdall.tenants.accessible = the set of tenant ids.
#
# Kept out of package heimdall.authz so that a decision never pays for it. Tenants the subject's
# policies name are decided one by one; registered tenants reached only through "*" policies are
# taken as a whole, since one "*" allow without a "*" deny opens every registered tenant that no
# policy denies by name.
package heimdall.tenants

import rego.v1

import data.heimdall.authz

accessible contains tenant if {
	some tenant in named_tenants
	allowed_on(tenant)
}

accessible contains tenant if {
	everywhere("allow")
	not everywhere("deny")
	some tenant, _ in data.heimdall.state.tenants
	not denied_by_name[tenant]
}

named_tenants contains tenant if {
	some entry in authz.subject_entries
	some tenant, _ in object.get(entry, "tenants", {})
}

denied_by_name contains tenant if {
	some tenant in named_tenants
	count(authz.denied_by(tenant, input.action)) > 0
}

allowed_on(tenant) if {
	count(authz.denied_by(tenant, input.action)) == 0
	count(authz.allowed_by(tenant, input.action)) > 0
}

# A "*" policy of the subject with this effect applies to the action.
everywhere(effect) if {
	some entry in authz.subject_entries
	some name in object.get(entry, "registered", [])
	policy := data.heimdall.state.policies[name]
	policy.effect == effect
	policy.actions[input.action]
	policy.resources[authz.requested_resource]
}
