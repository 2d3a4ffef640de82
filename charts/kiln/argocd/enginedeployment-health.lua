-- Argo CD health of a kiln.dev EngineDeployment (argocd-cm key:
-- resource.customizations.health.kiln.dev_EngineDeployment). Uses no Lua library beyond the base.
--   Healthy      Ready=True for the current generation
--   Progressing  no status yet, status of an older generation, Reconciling=True, not Ready yet
--                (a new key's canary Progressing, Analyzing or Promoting sets Reconciling)
--   Degraded     Stalled=True (for the current generation: a new key Rejected by the gate or
--                RolledBack, while the current key serves on); phase Failed, should the kind
--                ever get a phase like EngineBuild's
local hs = {status = "Progressing", message = "Waiting for kiln to reconcile the EngineDeployment"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if observed == nil or (generation ~= nil and observed ~= generation) then
  hs.message = "Waiting for kiln to observe generation " .. tostring(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (status is for generation " .. tostring(observed) .. ")"
  end
  return hs
end
local ready, reconciling, stalled = nil, nil, nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "Reconciling" then reconciling = c end
    if c.type == "Stalled" then stalled = c end
  end
end
local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then return c.reason end
  return fallback
end
if stalled ~= nil and stalled.status == "True" then
  return {status = "Degraded", message = text(stalled, "Stalled")}
end
if obj.status.phase == "Failed" then
  return {status = "Degraded", message = text(ready, "Build failed")}
end
if reconciling ~= nil and reconciling.status == "True" then
  return {status = "Progressing", message = text(reconciling, "Reconciling")}
end
if ready ~= nil and ready.status == "True" then
  return {status = "Healthy", message = text(ready, "Serving")}
end
hs.message = text(ready, "Not ready yet")
return hs
