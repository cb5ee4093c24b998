$user = Get-StewardExUser -Identity ([string]$p.identity)
$kind = [string]$user.RecipientTypeDetails
$StewardPrior = [ordered]@{ recipient_type_details = $kind }
if ($kind -eq 'UserMailbox') {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardRecipient (Get-Recipient -Identity ([string]$user.DistinguishedName))) -Prior $StewardPrior)
}
if ($kind -ne 'User' -and $kind -ne 'DisabledUser') {
    return (Out-StewardResult -Status 'failed' -Category 'already_exists' -Prior $StewardPrior -Reason ('Enable-Mailbox : ' + [string]$p.identity + ' is already mail-enabled (' + $kind + ').'))
}
$params = @{ Identity = [string]$user.DistinguishedName }
if (Test-StewardValue 'database') { $params['Database'] = [string]$p.database }
if (Test-StewardValue 'alias') { $params['Alias'] = [string]$p.alias }
$null = Enable-Mailbox @params -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardRecipient (Get-Recipient -Identity ([string]$user.DistinguishedName))) -Prior $StewardPrior)
