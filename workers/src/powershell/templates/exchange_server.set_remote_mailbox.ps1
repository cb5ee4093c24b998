$remote = Get-RemoteMailbox -Identity ([string]$p.identity)
$type = 'Regular'
if ([string]$remote.RecipientTypeDetails -eq 'RemoteSharedMailbox') { $type = 'Shared' }
elseif ([string]$remote.RecipientTypeDetails -eq 'RemoteRoomMailbox') { $type = 'Room' }
elseif ([string]$remote.RecipientTypeDetails -eq 'RemoteEquipmentMailbox') { $type = 'Equipment' }
$params = @{}
$StewardPrior = [ordered]@{}
if ((Test-StewardValue 'type') -and [string]$p.type -ne $type) {
    $StewardPrior['type'] = $type
    $params['Type'] = [string]$p.type
}
if ((Test-StewardValue 'hidden_from_address_lists_enabled') -and [bool]$p.hidden_from_address_lists_enabled -ne [bool]$remote.HiddenFromAddressListsEnabled) {
    $StewardPrior['hidden_from_address_lists_enabled'] = [bool]$remote.HiddenFromAddressListsEnabled
    $params['HiddenFromAddressListsEnabled'] = [bool]$p.hidden_from_address_lists_enabled
}
if ($params.Count -eq 0) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardRecipient $remote) -Prior $StewardPrior)
}
Set-RemoteMailbox -Identity ([string]$remote.DistinguishedName) @params -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardRecipient (Get-RemoteMailbox -Identity ([string]$remote.DistinguishedName))) -Prior $StewardPrior)
