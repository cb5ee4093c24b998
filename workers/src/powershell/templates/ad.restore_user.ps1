$guid = [guid][string]$p.object_guid
$live = @(Get-ADObject @StewardAd -Filter 'ObjectGUID -eq $guid')
if ($live.Count -gt 0) {
    return (Out-StewardResult -Status 'unchanged' -Result ([ordered]@{ distinguished_name = [string]$live[0].DistinguishedName }))
}
$deleted = @(Get-ADObject @StewardAd -Filter 'ObjectGUID -eq $guid' -IncludeDeletedObjects)
if ($deleted.Count -eq 0) {
    return (Out-StewardResult -Status 'failed' -Category 'not_found' -Reason ('No deleted object with ObjectGUID ' + [string]$guid + ' is left to restore (the AD Recycle Bin keeps deleted objects for the deleted object lifetime only).'))
}
Restore-ADObject @StewardAd -Identity $guid -Confirm:$false
$restored = @(Get-ADObject @StewardAd -Filter 'ObjectGUID -eq $guid')
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ distinguished_name = [string]$restored[0].DistinguishedName }))
