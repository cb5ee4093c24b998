$user = Get-StewardExUser -Identity ([string]$p.identity)
$kind = [string]$user.RecipientTypeDetails
$shared = (Test-StewardValue 'shared') -and [bool]$p.shared
$StewardPrior = [ordered]@{ recipient_type_details = $kind }
$wantKind = 'RemoteUserMailbox'
if ($shared) { $wantKind = 'RemoteSharedMailbox' }
if ($kind -eq $wantKind) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardRecipient (Get-Recipient -Identity ([string]$user.DistinguishedName))) -Prior $StewardPrior)
}
if ($kind -ne 'User') {
    return (Out-StewardResult -Status 'failed' -Category 'already_exists' -Prior $StewardPrior -Reason ('Enable-RemoteMailbox : The user ' + [string]$p.identity + ' is already mail-enabled (' + $kind + ').'))
}
$params = @{ Identity = [string]$user.DistinguishedName }
if (Test-StewardValue 'remote_routing_address') { $params['RemoteRoutingAddress'] = [string]$p.remote_routing_address }
if ($shared) {
    $null = Enable-RemoteMailbox @params -Shared -Confirm:$false
} else {
    $null = Enable-RemoteMailbox @params -Confirm:$false
}
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardRecipient (Get-Recipient -Identity ([string]$user.DistinguishedName))) -Prior $StewardPrior)
