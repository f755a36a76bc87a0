package platform

import (
	"net/http"

	"github.com/runagent-go/runagent/internal/domain"
)

// handleDeleteUserData is DELETE /api/v1/agents/{id}/users/{user_id}
// (deploy): everything the user's runs wrote to the agent's persistent
// folders is removed, once the user's instances have stopped. The next run
// of the user starts from the bundle's content again.
func (p *Platform) handleDeleteUserData(w http.ResponseWriter, r *http.Request) {
	k, ok := p.requireKey(w, r, domain.ScopeDeploy)
	if !ok {
		return
	}
	id, ok := p.ownedAgent(w, k, r.PathValue("id"))
	if !ok {
		return
	}
	user := r.PathValue("user_id")
	if err := p.mgr.DeleteUserData(r.Context(), id, user); err != nil {
		p.storeError(w, err)
		return
	}
	p.wire.WriteEnvelope(w, http.StatusOK, map[string]any{"agent_id": id, "user_id": user, "deleted": true},
		"The user's persistent data is deleted")
}
